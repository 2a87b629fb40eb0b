"""Quote and signature stripping, one row per client style."""

from __future__ import annotations

import pytest

from channels.mail_quotes import strip_reply

CASES: dict[str, tuple[str, str, str | None]] = {
    "gmail_en": (
        "Sounds good.\n\nOn Mon, Apr 1, 2024 at 10:00 AM Support <s@kefu.test> wrote:\n> old text\n",
        "Sounds good.",
        "on_wrote",
    ),
    "gmail_en_wrapped": (
        "Sounds good.\n\nOn Mon, Apr 1, 2024 at 10:00 AM Customer Service <support@kefu.test>\nwrote:\n\n> old\n",
        "Sounds good.",
        "on_wrote",
    ),
    "gmail_zh": (
        "好的。\n\n客服 <s@kefu.test> 于2024年4月1日周一 10:00写道：\n> 旧的\n",
        "好的。",
        "zh_wrote",
    ),
    "apple_mail_zh": (
        "可以。\n\n2024年4月1日 10:00，客服 <s@kefu.test> 写道：\n\n> 旧的\n",
        "可以。",
        "zh_wrote",
    ),
    "thunderbird_zh": ("行。\n\n在 2024/4/1 10:00, 客服 写道:\n> 旧的\n", "行。", "zh_wrote"),
    "outlook_en": (
        "Please hurry.\n\n________________________________\nFrom: Support <s@kefu.test>\nSent: Monday\n\nold\n",
        "Please hurry.",
        "outlook_rule",
    ),
    "outlook_zh_block": (
        "请尽快。\n\n发件人: 客服 <s@kefu.test>\n发送时间: 2024年4月1日 10:00\n收件人: 我\n\n旧的\n",
        "请尽快。",
        "from_block",
    ),
    "outlook_original_message": (
        "Yes.\n\n-----Original Message-----\nFrom: a\n",
        "Yes.",
        "original_message",
    ),
    "netease_zh_original": (
        "收到。\n\n-----原始邮件-----\n发件人：客服\n",
        "收到。",
        "zh_original",
    ),
    "qq_mail_original": (
        "谢谢\n\n------------------\u00a0原始邮件\u00a0------------------\n发件人: 客服\n",
        "谢谢",
        "zh_original",
    ),
    "foxmail_en_original": (
        "OK\n\n------------------ Original ------------------\nFrom: a\n",
        "OK",
        "original_message",
    ),
    "forwarded": ("FYI\n\n---------- Forwarded message ---------\nFrom: a\n", "FYI", "forwarded"),
    "trailing_gt_quote": ("My answer\n\n> quoted line\n> another\n", "My answer", "gt_quote"),
    "thunderbird_name_wrote": ("Fine.\n\nAnn <ann@example.com> wrote:\n> x\n", "Fine.", "wrote_on"),
}

SIGNATURES: dict[str, tuple[str, str]] = {
    "rfc3676_dashes": ("Hello there\n\n-- \nPeter\n+420 1\n", "Hello there"),
    "sent_from_iphone": ("Cancel it\n\nSent from my iPhone\n", "Cancel it"),
    "get_outlook": ("Refund please\n\nGet Outlook for Android\n", "Refund please"),
    "zh_iphone": ("取消订单\n\n发自我的iPhone\n", "取消订单"),
    "zh_netease": ("退款\n\n发自 网易邮箱大师\n", "退款"),
    "qq_rule": ("谢谢\n\n------------------\n韩梅梅\n", "谢谢"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_quoted_history_is_cut(name: str) -> None:
    text, new, rule = CASES[name]
    stripped = strip_reply(text)
    assert stripped.text == new
    assert stripped.cut == rule


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_is_cut(name: str) -> None:
    text, new = SIGNATURES[name]
    assert strip_reply(text).text == new


def test_text_without_history_is_kept_whole() -> None:
    text = "My friend wrote: this is fine.\nAnd -- dashes -- inside lines stay."
    assert strip_reply(text).text == text
    assert strip_reply(text).cut is None


def test_a_reply_that_is_all_quote_keeps_everything() -> None:
    text = "> only quoted\n> lines\n"
    assert strip_reply(text).text == text.strip()
