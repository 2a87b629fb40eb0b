"""Text measures shared by channels and the handlers that size what channels will send."""

from __future__ import annotations


def utf16_len(text: str) -> int:
    # Telegram measures message length in UTF-16 code units: an emoji outside the BMP counts twice.
    return len(text.encode("utf-16-le")) // 2
