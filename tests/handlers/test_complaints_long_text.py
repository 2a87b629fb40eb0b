"""A long message (a 64 KB mail or webhook body) is classified from its head, so the cost of
classifying one message on the event loop is bounded whatever its length."""

from __future__ import annotations

from handlers import complaints
from handlers.complaints import classify

FILLER = "Item 12\nlink (https://shop.example/12)\n\n"
THREAT = "\n\nI will sue you and go to the police. 我要去消协投诉你们，报警！"


def long_text(head: str, tail: str) -> str:
    body = head + "\n\n" + FILLER * (complaints.CLASSIFY_CHARS // len(FILLER) + 200)
    return body + tail


def test_only_the_head_of_a_long_text_is_read() -> None:
    head = "Order 1234 arrived today."
    for language in ("en", "zh", None):
        long = long_text(head, THREAT)
        assert len(long) > 2 * complaints.CLASSIFY_CHARS
        assert classify(long, language) == classify(long[: complaints.CLASSIFY_CHARS], language)
        assert classify(long, language).severity != "high"  # the threat past the head is unread


def test_a_complaint_at_the_start_of_a_long_text_is_found() -> None:
    for head in (
        "The parcel arrived broken and nobody answers. I will sue you and go to the police.",
        "快递到了，东西是坏的，客服也不理人。我要去消协投诉你们，报警！",
    ):
        verdict = classify(long_text(head, ""), None)
        assert verdict.is_complaint and verdict.severity == "high", verdict
