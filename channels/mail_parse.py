"""Raw RFC 5322 bytes -> ParsedMail: what kefu needs to log a customer's mail. Pure: no I/O.

Parsing uses the standard library's email package (policy.default); charsets are decoded here, not
by the email package, so that mislabelled and GB2312-labelled text comes out right.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.errors import (
    MessageDefect,
    MissingHeaderBodySeparatorDefect,
    MultipartInvariantViolationDefect,
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
)
from email.header import decode_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr

import charset_normalizer
from bs4 import BeautifulSoup, Tag

from channels.mail_quotes import strip_reply


class MailError(Exception):
    """Base of the two-level hierarchy caught at the channel's one entry point."""


class MalformedMail(MailError):
    """The message itself is broken (the sender's problem): logged as an event, raw kept."""


class MailSystemError(MailError):
    """kefu's own side failed (disk full, store not writable): retried, never acknowledged."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    mime_type: str
    data: bytes
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str
    sender: str  # lowercased addr-spec
    display_name: str | None
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]  # header order: oldest first
    date: str | None
    body: str  # the whole text part (after HTML conversion)
    text: str  # what the customer wrote now
    from_html: bool
    quote_cut: str | None
    attachments: tuple[Part, ...]
    noise: str | None  # None for a customer's mail; else why it is never answered
    failed_recipients: tuple[str, ...] = ()
    dsn_status: str | None = None
    language: str | None = None
    charset: str | None = None
    defects: tuple[str, ...] = field(default_factory=tuple)


# --- identifiers -----------------------------------------------------------------------------

_MSGID = re.compile(r"<([^<>\s]+)>")


def normalize_msgid(value: str) -> str:
    """RFC 5322 msg-id without its angle brackets; the one form kefu stores and compares."""
    value = value.strip()
    found = _MSGID.search(value)
    if found:
        return found.group(1)
    return value.strip("<> \t\r\n")


def msgid_list(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSGID.findall(value)
    if found:
        return found
    return [v for v in (normalize_msgid(p) for p in value.split()) if v]


def synthetic_msgid(raw: bytes) -> str:
    """Stable id for mail without Message-ID (RFC 5322 3.6.4 makes it optional)."""
    return f"sha256-{hashlib.sha256(raw).hexdigest()[:40]}@kefu.invalid"


# --- charsets ---------------------------------------------------------------------------------

# Mail clients label GBK text "gb2312" all the time; GB18030 is a superset of both (WHATWG
# Encoding: gb2312, gbk and x-gbk are all the "gbk" decoder). Big5 as sent by Windows and Hong Kong
# systems holds HKSCS characters. ISO-8859-1 labels mean windows-1252 in practice (WHATWG).
CHARSET_ALIASES: dict[str, str] = {
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "windows-936": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "ascii",
    "ks_c_5601-1987": "cp949",
}
_UNKNOWN = {"", "unknown-8bit", "x-unknown", "unknown", "default", "8bit"}
_LATIN = {"ascii", "cp1252"}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def codec_for(label: str | None) -> str | None:
    if label is None:
        return None
    label = label.strip().strip('"').lower()
    if label in _UNKNOWN:
        return None
    label = CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _detect(data: bytes) -> str | None:
    best = charset_normalizer.from_bytes(data).best()
    return None if best is None else str(best.encoding)


def decode_bytes(data: bytes, label: str | None) -> tuple[str, str]:
    """(text, codec used). Trusts a label that decodes cleanly, except the latin/ascii ones that
    also decode mislabelled 8-bit text: those are checked against UTF-8 and detection."""
    codec = codec_for(label)
    if data.isascii():
        return data.decode("ascii"), codec or "ascii"
    if codec is not None and codec not in _LATIN:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            pass  # mislabelled: fall through to detection
    # RFC 6657 4: a text part without charset is US-ASCII; 8-bit bytes there, or under an ASCII or
    # Latin-1 label, are most often UTF-8 or the sender's local charset.
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    detected = _detect(data)
    if detected is not None:
        detected = codec_for(detected) or detected
        # A Latin label is believed unless the bytes look like double-byte CJK text: there nearly
        # every byte is 8-bit, while in Western text only the accented letters are.
        high = sum(b >= 0x80 for b in data) / max(1, sum(not chr(b).isspace() for b in data))
        if codec is None or (high > 0.3 and _CJK.search(data.decode(detected, errors="replace"))):
            return data.decode(detected, errors="replace"), detected
    fallback = codec or "cp1252"
    return data.decode(fallback, errors="replace"), fallback


def decode_words(raw: str) -> str:
    """An RFC 2047 header value (or raw 8-bit, as some Chinese clients send) as text."""
    out: list[str] = []
    try:
        parts = decode_header(raw)
    except Exception:  # noqa: BLE001 - a broken encoded word: keep the header as it came
        parts = [(raw, None)]
    for value, label in parts:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogateescape")
            out.append(decode_bytes(data, None)[0] if not data.isascii() else value)
        else:
            out.append(decode_bytes(value, label)[0])
    text = "".join(out)
    return re.sub(r"\s+", " ", text).strip()


def _raw_header(msg: Message, name: str) -> str | None:
    lowered = name.lower()
    for key, value in msg.raw_items() if isinstance(msg, EmailMessage) else msg.items():
        if key.lower() == lowered:
            return re.sub(r"\r?\n[ \t]+", " ", str(value))
    return None


def header(msg: Message, name: str) -> str:
    raw = _raw_header(msg, name)
    return decode_words(raw) if raw is not None else ""


# --- HTML -------------------------------------------------------------------------------------

_BLOCKS = (
    "p", "div", "table", "tr", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
)
# Quoted history in HTML replies: Gmail's gmail_quote, Thunderbird/Apple's <blockquote type=cite>,
# Outlook's divRplyFwdMsg (everything after #appendonsend is the quoted mail).
_HTML_QUOTES = ("div.gmail_quote", "blockquote[type=cite]", "div.moz-cite-prefix", "#divRplyFwdMsg")


def html_to_text(html: str, *, drop_quotes: bool = True) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head", "title", "meta", "noscript"]):
        tag.decompose()
    if drop_quotes:
        marker = soup.find(id="appendonsend")
        if isinstance(marker, Tag):
            for sibling in list(marker.find_all_next()):
                if isinstance(sibling, Tag) and not sibling.decomposed:
                    sibling.decompose()
        for selector in _HTML_QUOTES:
            for tag in soup.select(selector):
                if not tag.decomposed:
                    tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for li in soup.find_all("li"):
        li.insert(0, "• ")
    for a in soup.find_all("a", href=True):
        href = str(a.get("href", ""))
        if href.startswith(("http://", "https://")) and a.get_text(strip=True) not in (href, ""):
            a.append(f" ({href})")
    for block in soup.find_all(_BLOCKS):
        block.insert_before("\n")
        block.insert_after("\n")
    lines = [re.sub(r"[ \t\u00a0\u3000]+", " ", line).strip() for line in soup.get_text().splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- structure --------------------------------------------------------------------------------

_FATAL_DEFECTS = (
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
)


def _defects(msg: Message) -> list[MessageDefect]:
    found: list[MessageDefect] = []
    for part in msg.walk():
        found.extend(part.defects)
    return found


def _text_of(part: Message) -> tuple[str, str]:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    return decode_bytes(data, part.get_content_charset())


def _filename(part: Message) -> str | None:
    name = part.get_filename()  # RFC 2231 parameters (filename*=) are decoded by the package
    if not name:
        ctype_name = part.get_param("name")
        if isinstance(ctype_name, tuple):  # RFC 2231 value the package left as a triple
            name = email_collapse(ctype_name)
        elif isinstance(ctype_name, str):
            name = ctype_name
    if not name:
        return None
    if "=?" in name or not name.isascii():
        name = decode_words(name)  # RFC 2047 words in a quoted parameter (Outlook, Foxmail)
    return name.replace("/", "_").replace("\\", "_").strip() or None


def email_collapse(value: tuple[str | None, str | None, str]) -> str:
    charset, _lang, text = value
    data = text.encode("latin-1", "surrogateescape")
    return decode_bytes(data, charset or "utf-8")[0]


@dataclass
class _Body:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Part] = field(default_factory=list)
    charset: str | None = None
    dsn: list[Message] = field(default_factory=list)
    original_headers: Message | None = None


def _is_attachment(part: Message, ctype: str, disposition: str) -> bool:
    # Header values are parsed once per part: with policy.default every get() parses again.
    if disposition == "attachment":
        return True
    return ctype.split("/")[0] not in ("text", "multipart") or (
        disposition == "inline" and ctype not in ("text/plain", "text/html") and _filename(part) is not None
    )


def _walk(part: Message, body: _Body) -> None:
    ctype = part.get_content_type()
    if ctype == "message/delivery-status":
        # RFC 3464: per-recipient fields; the package parses each block as headers
        payload = part.get_payload()
        if isinstance(payload, list):
            body.dsn.extend(payload)
        return
    if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            body.original_headers = inner[0]
        elif ctype != "message/rfc822":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                body.original_headers = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
        if ctype == "message/rfc822" and isinstance(inner, list) and inner:
            body.attachments.append(
                Part(_filename(part) or "message.eml", ctype, inner[0].as_bytes(policy=policy.SMTP))
            )
        return
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        if ctype == "multipart/alternative":
            # RFC 2046 5.1.4: the last part the reader understands is the best; kefu prefers plain text.
            plain = [c for c in children if c.get_content_type() == "text/plain"]
            chosen = plain[-1:] or [c for c in children if c.get_content_type() == "text/html"][-1:] or children[-1:]
            for child in chosen:
                _walk(child, body)
            return
        for child in children:
            _walk(child, body)
        return
    disposition = (part.get_content_disposition() or "").lower()
    if _is_attachment(part, ctype, disposition):
        data = part.get_payload(decode=True)
        body.attachments.append(
            Part(
                _filename(part) or f"attachment{len(body.attachments) + 1}",
                ctype,
                data if isinstance(data, bytes) else b"",
                inline=disposition == "inline",
            )
        )
        return
    if ctype == "text/html":
        text, codec = _text_of(part)
        body.html.append(text)
        body.charset = body.charset or codec
    elif ctype.startswith("text/"):
        text, codec = _text_of(part)
        body.plain.append(text)
        body.charset = body.charset or codec


# --- noise (RFC 3834) -------------------------------------------------------------------------

_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "noreply-dmarc-support"}
_BULK = {"bulk", "junk", "list", "auto_reply"}


def noise_of(msg: Message, sender: str, own: str | None) -> str | None:
    if own and sender == own:
        return "own_address"
    auto = header(msg, "Auto-Submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return "auto_submitted"  # RFC 3834 5: never answer these
    if header(msg, "Precedence").strip().lower() in _BULK:
        return "precedence"
    if header(msg, "X-Autoreply") or header(msg, "X-Autorespond") or header(msg, "X-Autogenerated"):
        return "auto_reply"
    if header(msg, "List-Id") or header(msg, "List-Unsubscribe"):
        return "list"  # RFC 2919 / RFC 2369: mailing-list traffic
    local = sender.split("@", 1)[0]
    if local in _DAEMONS or header(msg, "Return-Path").strip() == "<>":
        return "mailer_daemon"
    return None


def _bounce(msg: Message, body: _Body) -> tuple[tuple[str, ...], str | None]:
    if msg.get_content_type() != "multipart/report" or not body.dsn:
        return (), None
    failed: list[str] = []
    status: str | None = None
    for block in body.dsn[1:] if len(body.dsn) > 1 else body.dsn:
        action = str(block.get("Action", "")).strip().lower()
        recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        if action != "failed" or not recipient:
            continue
        address = recipient.split(";", 1)[-1].strip().strip("<>").lower()
        if address and address not in failed:
            failed.append(address)
            status = status or str(block.get("Status", "")).strip() or None
    return tuple(failed), status


# --- entry --------------------------------------------------------------------------------

def _language(text: str) -> str | None:
    if _CJK.search(text):
        return "zh"
    if re.search(r"[A-Za-z]{3}", text):
        return "en"
    return None


def parse_message(raw: bytes, *, own_address: str | None = None) -> ParsedMail:
    """Raises MalformedMail for a message that cannot be read as mail from someone."""
    if not raw.strip():
        raise MalformedMail("empty message")
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    defects = _defects(msg)
    fatal = [d for d in defects if isinstance(d, _FATAL_DEFECTS)]
    if fatal:
        raise MalformedMail(f"broken MIME structure: {type(fatal[0]).__name__}")
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects) and not msg.keys():
        raise MalformedMail("no header section")
    from_raw = _raw_header(msg, "From") or _raw_header(msg, "Sender") or ""
    name, addr = parseaddr(from_raw)
    addr = addr.strip().lower()
    if "@" not in addr or " " in addr:
        raise MalformedMail("no sender address in From")
    message_id = normalize_msgid(header(msg, "Message-ID")) or synthetic_msgid(raw)
    body = _Body()
    _walk(msg, body)
    from_html = not body.plain and bool(body.html)
    full = "\n\n".join(t.strip() for t in body.plain) if body.plain else "\n\n".join(
        html_to_text(h) for h in body.html
    )
    full = full.replace("\r\n", "\n").strip()
    stripped = strip_reply(full)
    subject = header(msg, "Subject")
    failed, status = _bounce(msg, body)
    noise = noise_of(msg, addr, own_address.lower() if own_address else None)
    if failed:
        noise = "bounce"
    in_reply_to = msgid_list(header(msg, "In-Reply-To"))
    references = msgid_list(header(msg, "References"))
    if not references and body.original_headers is not None and failed:
        original = normalize_msgid(str(body.original_headers.get("Message-ID", "")))
        references = [original] if original else []
    return ParsedMail(
        message_id=message_id,
        sender=addr,
        display_name=decode_words(name) or None if name else None,
        subject=subject,
        in_reply_to=tuple(in_reply_to),
        references=tuple(references),
        date=header(msg, "Date") or None,
        body=full,
        text=stripped.text,
        from_html=from_html,
        quote_cut=stripped.cut,
        attachments=tuple(body.attachments),
        noise=noise,
        failed_recipients=failed,
        dsn_status=status,
        language=_language(stripped.text + " " + subject),
        charset=body.charset,
        defects=tuple(type(d).__name__ for d in defects),
    )


def reply_ids(mail: ParsedMail) -> tuple[str, ...]:
    """Threading hints, most recent first: In-Reply-To, then References from the newest back."""
    seen: list[str] = []
    for value in (*mail.in_reply_to, *reversed(mail.references)):
        if value not in seen:
            seen.append(value)
    return tuple(seen)


_TOKEN = re.compile(r"\[#(\d{1,12})\]")


def conversation_token(subject: str) -> int | None:
    found = _TOKEN.findall(subject)
    return int(found[-1]) if found else None
