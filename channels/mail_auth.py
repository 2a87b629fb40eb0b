"""Is the From domain of a mail authenticated? Anyone can write any From: identity-bearing actions
(consent withdrawal, survey answers) need the domain vouched for.

Two sources, either is enough:
- the receiving server's verdict, `Authentication-Results` (RFC 8601) with dmarc=pass, or
  dkim=pass for the From domain, from an authserv-id the operator trusts (their own MX strips
  forged copies of its own id; any other id is ignored);
- a DKIM signature (RFC 6376) kefu verifies itself with dkimpy, for the From domain or a parent of
  it (relaxed alignment, RFC 7489 3.1.1).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import dkim

log = logging.getLogger("kefu.email.auth")

# dkimpy's DNS hook: (name, timeout=...) -> the TXT record's bytes, or None.
DnsLookup = Callable[..., bytes | None]

# Messages longer than this carry no identity-bearing action (an opt-out word, a survey score
# with a short comment), so kefu does not spend a DNS lookup verifying their signature.
VERIFY_TEXT_UP_TO = 300


@dataclass(frozen=True, slots=True)
class AuthSettings:
    authserv_ids: tuple[str, ...] = ()
    verify_dkim: bool = True
    dns: DnsLookup | None = field(default=None, compare=False)  # None: dkimpy's (dnspython)
    timeout: float = 5.0


_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_AR = re.compile(
    rb"^Authentication-Results:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
_RESULT = re.compile(r"\b(dmarc|dkim)\s*=\s*(\w+)([^;]*)", re.IGNORECASE)
_PROP = re.compile(r"\bheader\.(from|d|i)\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")


def aligned(domain: str, from_domain: str) -> bool:
    domain, from_domain = domain.lower().strip(".").lstrip("@"), from_domain.lower().strip(".")
    if "@" in domain:
        domain = domain.rsplit("@", 1)[1]
    return bool(domain) and (from_domain == domain or from_domain.endswith("." + domain))


def from_results(raw: bytes, from_domain: str, trusted: tuple[str, ...]) -> str | None:
    """'dmarc=pass (mx.example.com)' when a trusted Authentication-Results vouches for the From
    domain, else None."""
    if not trusted:
        return None
    head = _HEADERS_END.split(raw, maxsplit=1)[0]
    wanted = {t.lower() for t in trusted}
    passed: list[str] = []
    for match in _AR.finditer(head):
        value = _COMMENT.sub(
            " ", re.sub(r"\r?\n[ \t]+", " ", match.group(1).decode("utf-8", "replace"))
        )
        authserv, _, results = value.partition(";")
        authserv_id = authserv.split()[0].lower() if authserv.split() else ""
        if authserv_id not in wanted:
            continue
        for method, result, props in _RESULT.findall(results):
            if result.lower() != "pass":
                continue
            found = dict((k.lower(), v) for k, v in _PROP.findall(props))
            domain = (
                found.get("from") if method.lower() == "dmarc" else found.get("d") or found.get("i")
            )
            if domain and aligned(domain, from_domain):
                passed.append(f"{method.lower()}=pass ({authserv_id})")
    # DMARC is the verdict about the From domain itself; an aligned DKIM pass is enough too.
    return min(passed, key=lambda v: not v.startswith("dmarc"), default=None)


def from_signature(raw: bytes, from_domain: str, settings: AuthSettings) -> str | None:
    """'dkim=pass (d=example.com, verified by kefu)' for a valid signature aligned with From."""
    if b"dkim-signature:" not in _HEADERS_END.split(raw, maxsplit=1)[0].lower():
        return None
    try:
        checker = dkim.DKIM(raw, timeout=int(settings.timeout))
        for index in range(len(_signatures(raw))):
            kwargs = {"dnsfunc": settings.dns} if settings.dns is not None else {}
            if checker.verify(idx=index, **kwargs):
                domain = (checker.domain or b"").decode("ascii", "replace")
                if aligned(domain, from_domain):
                    return f"dkim=pass (d={domain}, verified by kefu)"
    except Exception as exc:  # noqa: BLE001 - dkimpy raises many kinds for bad input or DNS
        log.info("email.dkim.unverified domain=%s error=%s", from_domain, type(exc).__name__)
    return None


def _signatures(raw: bytes) -> list[bytes]:
    head = _HEADERS_END.split(raw, maxsplit=1)[0]
    return re.findall(rb"^DKIM-Signature:", head, re.IGNORECASE | re.MULTILINE)


def authenticate(raw: bytes, sender: str, text: str, settings: AuthSettings) -> str | None:
    """How the sender's domain was authenticated, or None."""
    if "@" not in sender:
        return None
    from_domain = sender.rsplit("@", 1)[1]
    verdict = from_results(raw, from_domain, settings.authserv_ids)
    if verdict is None and settings.verify_dkim and len(text) <= VERIFY_TEXT_UP_TO:
        verdict = from_signature(raw, from_domain, settings)
    return verdict
