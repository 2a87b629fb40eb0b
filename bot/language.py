"""Which language a customer reads: language tags, kefu's template languages, and East Asian
script in a text. Pure vocabulary, shared by channels (Telegram's language_code, mail) and
handlers (templates, routing, consent, the complaint detector).

CJK is the one definition of "written in an East Asian script". kefu answers in zh or en; where
the customer's language is unknown, text in this range gets the zh templates. The range is the
widest correct one, because every part of it is something a customer of a Chinese business types:
- Han ideographs: the basic block, extension A, the compatibility ideographs, and extensions B-G
  beyond the BMP (rare characters in names and places, e.g. 𠮷, are from there);
- CJK symbols and punctuation (、。「」【】 and the ideographic space) and the full-width and
  half-width forms (！？，：and full-width Latin): what a Chinese input method types, so "？？？"
  alone is still Chinese input;
- bopomofo (zhuyin, typed in Taiwan);
- Japanese kana and Korean hangul: mail in these scripts comes from East Asian senders, and the
  mail parser already counted them (a reply in zh is nearer than en for a kana-only line);
  narrowing here would move Korean and Japanese mail to English, a change no one asked for.
"""

from __future__ import annotations

import re

# Languages kefu has templates and complaint cues for; the first is the fallback of fallbacks.
LANGUAGES = ("zh", "en")

CJK = re.compile(
    "["
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK radicals supplement, Kangxi radicals
    "\u3000-\u303f"  # CJK symbols and punctuation
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3100-\u312f"  # bopomofo
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31a0-\u31bf"  # bopomofo extended
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK unified ideographs extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\ua960-\ua97f"  # Hangul Jamo extended-A
    "\uac00-\ud7af"  # Hangul syllables
    "\ud7b0-\ud7ff"  # Hangul Jamo extended-B
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\ufe30-\ufe4f"  # CJK compatibility forms (vertical punctuation)
    "\uff00-\uffef"  # half-width and full-width forms
    "\U00020000-\U0003134f"  # CJK unified ideographs extensions B-G, compatibility supplement
    "]"
)

_LATIN_WORD = re.compile(r"[A-Za-z]{3}")


def primary_tag(code: str | None) -> str | None:
    """An IETF tag's primary language: "zh-Hans", "zh_CN", " ZH " -> "zh"; "pt-br" -> "pt".
    None for nothing or for what is not a language subtag (2-3 letters)."""
    if not code:
        return None
    primary = code.strip().lower().replace("_", "-").split("-")[0]
    return primary if primary.isalpha() and 2 <= len(primary) <= 3 else None


def language_of(value: str | None, default: str = "zh") -> str:
    """The template language for a tag: 'zh-CN', 'zh_Hans', 'ZH' -> 'zh'; 'en-GB' -> 'en';
    anything else -> the default (itself one of LANGUAGES, else the first of them)."""
    primary = primary_tag(value)
    if primary in LANGUAGES:
        return primary
    return default if default in LANGUAGES else LANGUAGES[0]


def text_language(text: str) -> str | None:
    """A guess from the text alone: zh for East Asian script, en for a Latin word, else None."""
    if CJK.search(text):
        return "zh"
    if _LATIN_WORD.search(text):
        return "en"
    return None
