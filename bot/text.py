"""Text measures shared by channels and the handlers that size what channels will send."""

from __future__ import annotations

import hashlib
import re

# An email address inside a text: a mail server quotes the one it refuses ("550 <a@b.c>: ...").
_ADDRESS = re.compile(r"([^\s<>@\"'(),;:\[\]]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def utf16_len(text: str) -> int:
    # Telegram measures message length in UTF-16 code units: an emoji outside the BMP counts twice.
    return len(text.encode("utf-16-le")) // 2


def redact_addresses(text: str) -> str:
    """A text bound for a log with each email address in it shortened to a***@example.com (the
    form kefu logs addresses in): enough to tell them apart, not enough to harvest."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)


def redact_id(value: object) -> str:
    """A person's chat or user id bound for a log, as its last three digits ("***789"): enough to
    tell a few apart while investigating, not enough to find the person."""
    text = str(value)
    return "***" + text[-3:] if len(text) > 3 else "***"


def redact_key(external_id: str) -> str:
    """A message's channel id bound for a log, as a short digest: the id itself can name the
    sender (a Telegram private chat's id is the customer's, a Message-ID can hold their address),
    yet an operator holding the id can match it ("key#1a2b3c4d5e6f")."""
    return "key#" + hashlib.sha256(external_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
