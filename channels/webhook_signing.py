"""How webhook requests and callbacks are signed: kefu's own scheme or Standard Webhooks 1.0.

kefu:     X-Kefu-Timestamp: <unix seconds>
          X-Kefu-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
standard: webhook-id, webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256(key,
          "<id>.<timestamp>.<body>")>, the key being the base64 after "whsec_" in the secret
          (https://www.standardwebhooks.com/, the scheme of Svix, Zapier and others: integrators
          verify it with a library they already have).

Either scheme rotates a secret the same way: while a source has a previous secret, a request
signed with either is accepted, and callbacks carry one signature per secret (space-separated),
so the receiver may switch to the new secret whenever it likes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["kefu", "standard"]
SCHEMES: tuple[Scheme, ...] = ("kefu", "standard")
WHSEC = "whsec_"


class SecretError(ValueError):
    """A secret that the scheme cannot use (a Standard Webhooks secret that is not base64)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """kefu's scheme: the X-Kefu-Signature value for one secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ("whsec_" + base64, the prefix optional)."""
    raw = secret.removeprefix(WHSEC)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            "is not a Standard Webhooks secret: use whsec_ followed by base64"
        ) from None
    if not key:
        raise SecretError("is empty")
    return key


def sign_standard(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    content = message_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class Signer:
    """One source's scheme and secrets, current first (it signs; every one of them verifies)."""

    scheme: Scheme
    secrets: tuple[str, ...]
    max_skew_seconds: int = 300

    def __post_init__(self) -> None:
        if not self.secrets:
            raise SecretError("no secret")
        if self.scheme == "standard":
            for secret in self.secrets:
                standard_key(secret)

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The signature headers of a callback, one signature per secret."""
        stamp = str(timestamp)
        if self.scheme == "standard":
            signatures = [
                sign_standard(standard_key(s), message_id, stamp, body) for s in self.secrets
            ]
            return {
                "webhook-id": message_id,
                "webhook-timestamp": stamp,
                "webhook-signature": " ".join(signatures),
            }
        return {
            "X-Kefu-Timestamp": stamp,
            "X-Kefu-Signature": " ".join(sign(s, stamp, body) for s in self.secrets),
        }

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """None when the request is signed with one of the secrets; else what is wrong, for the
        sender (never which secret came close)."""
        if self.scheme == "standard":
            return self._verify_standard(headers, body, now)
        timestamp = headers.get("x-kefu-timestamp")
        signature = headers.get("x-kefu-signature")
        if not timestamp or not signature:
            return "X-Kefu-Timestamp and X-Kefu-Signature headers are required"
        problem = self._check_time(timestamp, now, "X-Kefu-Timestamp")
        if problem is not None:
            return problem
        given = _split(signature)
        expected = [sign(s, timestamp, body) for s in self.secrets]
        if _any_match(expected, given):
            return None
        return "X-Kefu-Signature does not match the body"

    def _verify_standard(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        message_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not message_id or not timestamp or not signature:
            return "webhook-id, webhook-timestamp and webhook-signature headers are required"
        problem = self._check_time(timestamp, now, "webhook-timestamp")
        if problem is not None:
            return problem
        given = [s for s in _split(signature) if s.startswith("v1,")]
        expected = [
            sign_standard(standard_key(s), message_id, timestamp, body) for s in self.secrets
        ]
        if _any_match(expected, given):
            return None
        return "webhook-signature has no v1 signature matching the body"

    def _check_time(self, timestamp: str, now: float, header: str) -> str | None:
        try:
            sent_at = int(timestamp)
        except ValueError:
            return f"{header} must be unix seconds"
        if abs(now - sent_at) > self.max_skew_seconds:
            return f"{header} is more than {self.max_skew_seconds} s away from now"
        return None


def _split(value: str) -> list[str]:
    """Signatures separated by spaces (Standard Webhooks) or commas between kefu's."""
    parts = value.replace(", sha256=", " sha256=").replace(",sha256=", " sha256=").split()
    return [p.strip() for p in parts if p.strip()]


def _any_match(expected: Sequence[str], given: Sequence[str]) -> bool:
    # Every pair is compared (no early exit) so timing does not tell which secret matched.
    found = False
    for want in expected:
        for got in given:
            found |= hmac.compare_digest(want.encode(), got.encode())
    return found


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    secret: str
    callback_url: str | None = None
    signing: Scheme = "kefu"
    # During a secret rotation: still accepted on requests, and callbacks carry both signatures.
    previous_secret: str | None = None

    def signer(self, max_skew_seconds: int) -> Signer:
        secrets = (self.secret, *((self.previous_secret,) if self.previous_secret else ()))
        return Signer(self.signing, secrets, max_skew_seconds)
