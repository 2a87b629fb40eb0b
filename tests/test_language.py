"""One definition of East Asian script and of language tags (bot/language.py), used by the mail
parser, the mail composer, the consent handler and the complaint detector alike."""

from __future__ import annotations

import pytest

from bot import language
from bot.intents import Outbound, Reply
from bot.language import CJK, language_of, primary_tag, text_language
from channels import mail_compose
from handlers import complaints, consent, templating


@pytest.mark.parametrize(
    "text",
    [
        "你好",  # Chinese, basic block
        "㐀",  # extension A
        "𠮷野家",  # extension B (beyond the BMP): a name character
        "𪚥",  # extension B
        "𰻞𰻞面",  # extension G
        "豈",  # compatibility ideograph
        "？？？",  # full-width punctuation only, as a Chinese input method types it
        "ＯＫ",  # full-width Latin, also typed through a CJK input method
        "，",  # full-width comma
        "「好」",  # CJK corner brackets
        "。",  # ideographic full stop
        "ㄅㄆㄇ",  # bopomofo
        "ありがとう",  # hiragana
        "カタカナ",  # katakana
        "ｶﾀｶﾅ",  # half-width katakana
        "안녕하세요",  # hangul syllables
        "ㅋㅋㅋ",  # hangul compatibility jamo
        "⺈",  # CJK radical
    ],
)
def test_east_asian_script_is_cjk(text: str) -> None:
    assert CJK.search(text), text
    assert text_language(text) == "zh"


@pytest.mark.parametrize(
    "text",
    ["hello", "Grüße aus Köln", "Привет", "مرحبا", "¿qué?", "!?,.", "😀👍", "ŝ ß ø", "— … ·"],
)
def test_other_scripts_are_not(text: str) -> None:
    assert not CJK.search(text), text


def test_text_language() -> None:
    assert text_language("hello there") == "en"
    assert text_language("ok") is None  # no Latin word of three letters, no CJK
    assert text_language("12345") is None
    assert text_language("订单 12345 where") == "zh"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("zh-Hans", "zh"), ("zh_CN", "zh"), (" ZH ", "zh"), ("pt-br", "pt"), ("yue", "yue"),
     ("", None), (None, None), ("1234", None), ("x-klingon", None), ("english", None)],
)
def test_primary_tag(code: str | None, expected: str | None) -> None:
    assert primary_tag(code) == expected


def test_language_of_falls_back() -> None:
    assert language_of("zh-CN") == "zh"
    assert language_of("en_GB", "zh") == "en"
    assert language_of("fr", "en") == "en"
    assert language_of(None, "en") == "en"
    assert language_of("fr", "de") == "zh"  # a default kefu has no templates for


def test_one_definition_everywhere() -> None:
    assert complaints.CJK is language.CJK
    assert consent.CJK is language.CJK
    assert mail_compose.CJK is language.CJK
    assert templating.language_of is language.language_of
    assert complaints.LANGUAGES is templating.LANGUAGES is language.LANGUAGES


@pytest.mark.parametrize(
    ("text", "lang"),
    [("𠮷野家の牛丼", "zh"), ("？？？", "zh"), ("안녕하세요", "zh"), ("hello", "en")],
)
def test_mail_reply_language_follows_the_written_text(text: str, lang: str) -> None:
    out = Outbound("email", "ann@example.com", Reply(text=text, conversation_id=1), "reply-1")
    assert mail_compose.reply_language(out) == lang


def test_mail_reply_language_prefers_the_customers() -> None:
    reply = Reply(text="您好", conversation_id=1, language="en_US")
    out = Outbound("email", "ann@example.com", reply, "reply-1")
    assert mail_compose.reply_language(out) == "en"
