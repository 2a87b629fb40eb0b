"""The MIME parser on each fixture (pure), charsets, identifiers, and the outgoing composer."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from bot.intents import Outbound, Reply
from channels.email import MailStore, parse_fetch, to_inbound
from channels.mail_compose import Composer, Identity, base_subject, reply_language
from channels.mail_parse import (
    MalformedMail,
    conversation_token,
    decode_bytes,
    msgid_list,
    normalize_msgid,
    parse_message,
    reply_ids,
)
from tests.channels.email_fixtures import ADDRESS, EXPECT, fixture_bytes, fixture_names

TEMPLATES = Path(__file__).resolve().parents[2] / "handlers" / "templates"


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_parses(name: str, tmp_path: Path) -> None:
    expect = EXPECT[name]
    inbound = to_inbound(fixture_bytes(name), MailStore(tmp_path, 1 << 20), own_address=ADDRESS)
    assert inbound.kind == expect.get("kind", "message")
    assert inbound.address == expect["address"]
    for text in expect.get("has", []):
        assert text in inbound.text
    for text in expect.get("lacks", []):
        assert text not in inbound.text
    assert "\ufffd" not in inbound.text  # no replacement characters: every charset decoded
    if "name" in expect:
        assert inbound.display_name == expect["name"]
    if "language" in expect:
        assert inbound.language == expect["language"]
    if "hint" in expect:
        assert inbound.conversation_hint == expect["hint"]
    if "reply_to" in expect:
        assert list(inbound.reply_to) == expect["reply_to"]
    assert [a.name for a in inbound.attachments] == expect.get("files", [])
    if "subject" in expect:
        assert inbound.title == expect["subject"]
    for defect in expect.get("defects", []):
        assert defect in inbound.meta["defects"]  # what was recovered stays visible


def test_oversized_attachment_is_described_not_kept(tmp_path: Path) -> None:
    inbound = to_inbound(
        fixture_bytes("attachment__rfc2047_filename"), MailStore(tmp_path, 10), own_address=ADDRESS
    )
    (attachment,) = inbound.attachments
    assert attachment.url is None and attachment.size == 70
    assert attachment.caption is not None and "not kept" in attachment.caption


def test_unwritable_store_is_a_system_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from channels.mail_parse import MailSystemError

    with pytest.raises(MailSystemError):
        to_inbound(
            fixture_bytes("plain__utf8_qp"), MailStore(blocker / "sub", 100), own_address=ADDRESS
        )


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        ("镕喆".encode("gbk"), "gb2312", "镕喆"),  # GBK-only characters under a GB2312 label
        ("𠀀".encode("gb18030"), "gbk", "𠀀"),  # a GB18030 four-byte character
        ("香港".encode("big5hkscs"), "big5", "香港"),
        ("café".encode(), "iso-8859-1", "café"),  # UTF-8 under a Latin-1 label
        ("café".encode("cp1252"), "iso-8859-1", "café"),
        (b"plain", None, "plain"),
        # 7-bit charsets: the label is read before the bytes are taken for ASCII
        ("注文について".encode("iso2022_jp"), "iso-2022-jp", "注文について"),
        ("Überfällig".encode("utf-7"), "utf-7", "Überfällig"),
        ("退款问题".encode("hz"), "hz-gb-2312", "退款问题"),
        ("注文について".encode("iso2022_jp"), None, "注文について"),  # unlabelled escapes
        # short Latin-1 text is never turned into CJK, labelled or not
        ("aaäöüßad".encode("latin-1"), "iso-8859-1", "aaäöüßad"),
        ("aaäöüßad".encode("latin-1"), None, "aaäöüßad"),
        ("Grüße".encode("latin-1"), None, "Grüße"),
        # short unlabelled GB2312
        ("发票".encode("gb2312"), None, "发票"),
        ("关于订单的问题".encode("gb2312"), None, "关于订单的问题"),
        # a stray 8-bit byte under an ASCII label is its Windows-1252 letter, not U+FFFD
        (b"20\x80 paid", "us-ascii", "20€ paid"),
        (b"Se\xf1or", "us-ascii", "Señor"),
        # labels mail uses that are not Python's names
        ("メルマガ".encode("cp932"), "x-sjis", "メルマガ"),
        ("①".encode("cp932"), "shift_jis", "①"),
    ],
)
def test_charsets(data: bytes, label: str | None, expected: str) -> None:
    assert decode_bytes(data, label)[0] == expected


def test_message_ids_normalise_the_same_on_both_sides() -> None:
    assert normalize_msgid(" <abc@x.example> ") == "abc@x.example"
    assert normalize_msgid("abc@x.example") == "abc@x.example"
    assert msgid_list("<a@x> <b@x>\r\n <c@x>") == ["a@x", "b@x", "c@x"]


def test_reply_ids_are_most_recent_first() -> None:
    raw = (
        b"From: a@example.com\r\nMessage-ID: <n@x>\r\nIn-Reply-To: <p@x>\r\n"
        b"References: <r1@x> <r2@x> <p@x>\r\n\r\nhi\r\n"
    )
    assert reply_ids(parse_message(raw)) == ("p@x", "r2@x", "r1@x")


def test_missing_message_id_gets_a_stable_one() -> None:
    raw = b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    first, second = parse_message(raw), parse_message(raw)
    assert first.message_id == second.message_id and first.message_id.endswith("@kefu.invalid")


def test_empty_message_is_malformed() -> None:
    with pytest.raises(MalformedMail):
        parse_message(b"\r\n")


def test_conversation_token() -> None:
    assert conversation_token("Re: Re: refund [#42]") == 42
    assert conversation_token("refund #42") is None


def test_parse_fetch_pairs_uids_with_bodies() -> None:
    lines = [
        b"1 FETCH (UID 7 BODY[] {3}",
        bytearray(b"abc"),
        b")",
        b"2 FETCH (BODY[] {2}",
        bytearray(b"de"),
        b" UID 9)",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [(7, b"abc"), (9, b"de")]


def _outbound(text: str, **fields: object) -> Outbound:
    reply = Reply(text=text, conversation_id=12, customer_id=3, **fields)  # type: ignore[arg-type]
    return Outbound("email", "ann@example.com", reply, "reply-1")


def test_composed_answer_threads_and_has_both_parts() -> None:
    composer = Composer(TEMPLATES, Identity(ADDRESS, "Acme Support"))
    out = _outbound(
        "Your refund is on its way.",
        answers=("c1@x", "c2@x"),
        title="Re: Refund? [#12]",
    )
    message, msgid = composer.compose(out, now=datetime(2024, 4, 1, tzinfo=UTC))
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    assert parsed["Subject"] == "Re: Refund? [#12]"
    assert parsed["In-Reply-To"] == "<c2@x>"
    assert parsed["References"] == "<c1@x> <c2@x>"
    assert parsed["Message-ID"] == f"<{msgid}>" and msgid.endswith("@kefu.test")
    assert parsed["From"] == "Acme Support <support@kefu.test>"
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None and "keep [#12] in the subject" in plain.get_content()
    assert html is not None and "Your refund is on its way." in html.get_content()
    # the same outbox row gives the same Message-ID on a retry
    assert composer.compose(out, now=datetime(2024, 4, 2, tzinfo=UTC))[1] == msgid


def test_html_part_escapes_the_agents_text() -> None:
    composer = Composer(TEMPLATES, Identity(ADDRESS, "Acme"))
    message, _ = composer.compose(_outbound("<script>x</script> & co"), now=datetime.now(UTC))
    html = message.get_body(("html",))
    assert html is not None and "&lt;script&gt;" in html.get_content()


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Re: RE: Fwd: order [#3]", "order"),
        ("回复：答复: 退款 [#9]", "退款"),
        ("AW: Frage", "Frage"),
        ("", ""),
    ],
)
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


def test_language_follows_meta_then_the_agents_text() -> None:
    assert reply_language(_outbound("hello", language="zh-CN")) == "zh"
    assert reply_language(_outbound("您好")) == "zh"
    assert reply_language(_outbound("hello")) == "en"


def test_gbk_under_a_latin1_label_is_recognised() -> None:
    data = "您好，我的订单还没有收到，请帮忙查一下物流。".encode("gbk")
    assert decode_bytes(data, "iso-8859-1")[0] == "您好，我的订单还没有收到，请帮忙查一下物流。"


def test_a_huge_html_mail_is_logged_in_bounded_time_and_size(tmp_path: Path) -> None:
    """A 1 MB newsletter: the text kept is bounded (the raw message keeps everything) and the
    repairs say so; converting it once took minutes (inserting before each table row)."""
    from channels.email import MAX_TEXT

    rows = "".join(
        f"<tr><td><p>Item <b>{i}</b> of the catalogue</p></td></tr>\r\n" for i in range(20000)
    )
    raw = (
        "From: shop@example.com\r\nTo: support@kefu.test\r\nSubject: catalogue\r\n"
        "Message-ID: <huge-1@example.com>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<html><body><p>Dear customer,</p><table>{rows}</table></body></html>\r\n"
    ).encode()
    inbound = to_inbound(raw, MailStore(tmp_path, 1 << 20), own_address=ADDRESS)
    assert len(raw) > 1_000_000
    assert inbound.text.startswith("Dear customer,\n\nItem 0 of the catalogue")
    assert len(inbound.text) <= MAX_TEXT + 4
    assert "html_truncated" in inbound.meta["defects"]
