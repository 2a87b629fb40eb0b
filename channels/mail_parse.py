"""Raw RFC 5322 bytes -> ParsedMail: what kefu needs to log a customer's mail. Pure: no I/O.

Parsing uses the standard library's email package with policy.compat32, which leaves header
values as they came (policy.default parses every header into objects, several times per part, and
was most of the parsing cost); headers are decoded here (RFC 2047), and so are charsets, not
by the email package, so that mislabelled and GB2312-labelled text comes out right.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import quopri
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
from email.utils import getaddresses

import chardet
import chardetng_py
from bs4 import BeautifulSoup
from bs4.element import CData, NavigableString, PageElement, Tag

from bot.language import text_language
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


UNKNOWN_SENDER = "unknown@kefu.invalid"


def synthetic_msgid(raw: bytes) -> str:
    """Stable id for mail without Message-ID (RFC 5322 3.6.4 makes it optional)."""
    return f"sha256-{hashlib.sha256(raw).hexdigest()[:40]}@kefu.invalid"


# --- charsets ---------------------------------------------------------------------------------

# Mail clients label GBK text "gb2312" all the time; GB18030 is a superset of both (WHATWG
# Encoding: gb2312, gbk and x-gbk are all the "gbk" decoder). Big5 as sent by Windows and Hong Kong
# systems holds HKSCS characters. ISO-8859-1 labels mean windows-1252 in practice (WHATWG), and so
# do Shift_JIS labels mean Windows-31J (cp932) and EUC-KR labels mean cp949.
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
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "x-euc-jp": "euc_jp",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
}
_UNKNOWN = {"", "unknown-8bit", "x-unknown", "unknown", "default", "8bit", "x-user-defined"}
_LATIN = {"ascii", "cp1252"}
# Double-byte East Asian codecs: a guess of one of these for Latin-labelled text needs two votes.
_MULTIBYTE = {
    "gb18030", "gb2312", "gbk", "big5", "big5hkscs", "cp950", "shift_jis", "cp932", "euc_jp",
    "euc_kr", "cp949", "johab", "euc_jis_2004", "shift_jis_2004",
}
# Escape sequences of the 7-bit ISO-2022 encodings (RFC 1468, RFC 1557) and of HZ (RFC 1843).
_ISO2022_JP = re.compile(rb"\x1b(\$[@B]|\$\(D|\(J|\(B|\(I)")
_ISO2022_KR = re.compile(rb"\x1b\$\)C")
_HZ = re.compile(rb"~\{[\x21-\x7e]{2,}~\}")


def codec_for(label: str | None) -> str | None:
    """The Python codec for a MIME charset label: every codec Python knows, under the names mail
    uses (IANA and WHATWG aliases, "x-" prefixes)."""
    if label is None:
        return None
    label = label.strip().strip('"').strip("'").lower()
    if label in _UNKNOWN:
        return None
    for name in (
        CHARSET_ALIASES.get(label, label),
        label.removeprefix("x-"),
        label.replace("_", "-"),
    ):
        try:
            return codecs.lookup(CHARSET_ALIASES.get(name, name)).name
        except LookupError:
            continue
    return None


def _norm(name: str | None) -> str | None:
    if not name:
        return None
    return codec_for(name)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def guess_codec(data: bytes, tld: str | None = None) -> str | None:
    """The codec of unlabelled 8-bit text, by measurement (bench/charset_detect.py): chardetng
    (Firefox's detector) is right on short Western and most short CJK text and never turns Latin
    text into CJK; chardet is right more often when the text is CJK. A CJK answer from chardet
    wins unless the sender's country domain lets chardetng decide."""
    if _is_utf8(data):
        return "utf-8"
    hint = (
        tld.encode("ascii") if tld and tld.isascii() and tld.isalpha() and tld.islower() else None
    )
    ng = _norm(chardetng_py.detect(data, allow_utf8=False, tld=hint))
    if hint in _CJK_TLDS:
        return ng
    other = _norm(chardet.detect(data).get("encoding"))
    if other in _MULTIBYTE and _decodes(data, other):
        return other
    return ng


_CJK_TLDS = {b"cn", b"tw", b"hk", b"mo", b"jp", b"kr"}


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _seven_bit(data: bytes) -> str | None:
    """Unlabelled 7-bit CJK: ISO-2022-JP/KR escapes or HZ (RFC 1843) in bytes that look ASCII."""
    if b"\x1b" in data:
        if _ISO2022_KR.search(data):
            return "iso2022_kr"
        if _ISO2022_JP.search(data):
            return "iso2022_jp"
    if b"~{" in data and _HZ.search(data):
        return "hz"
    return None


def decode_iso2022_jp(data: bytes) -> str:
    """ISO-2022-JP as Japanese mailers really send it (CP50220: NEC and IBM extensions such as ①),
    which Python's strict iso2022_jp codec refuses: each JIS X 0208 run re-read as Windows-31J."""
    out: list[str] = []
    double = False
    pos = 0
    for match in re.finditer(rb"\x1b(\$[@B]|\([BJI])", data):
        chunk = data[pos : match.start()]
        out.append(_jis_run(chunk) if double else chunk.decode("cp932", "replace"))
        double = match.group(1).startswith(b"$")
        pos = match.end()
    tail = data[pos:]
    out.append(_jis_run(tail) if double else tail.decode("cp932", "replace"))
    return "".join(out)


def _jis_run(chunk: bytes) -> str:
    sjis = bytearray()
    for i in range(0, len(chunk) - 1, 2):
        j1, j2 = chunk[i], chunk[i + 1]
        if not (0x21 <= j1 <= 0x7E and 0x21 <= j2 <= 0x7E):
            sjis += bytes((j1, j2))
            continue
        s1 = (j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0)
        s2 = j2 + (0x1F if j1 % 2 else 0x7E)
        if s2 >= 0x7F and j1 % 2:
            s2 += 1
        sjis += bytes((s1, s2))
    return bytes(sjis).decode("cp932", "replace")


def decode_bytes(data: bytes, label: str | None, tld: str | None = None) -> tuple[str, str]:
    """(text, codec used). The label first, whatever it names (7-bit ISO-2022-JP, UTF-7 and HZ
    included); a guess only for unlabelled bytes and for bytes their label cannot decode. An ASCII
    or Latin-1 label with stray 8-bit bytes means Windows-1252 (WHATWG), unless the bytes are
    UTF-8 or both detectors say double-byte CJK."""
    codec = codec_for(label)
    if codec is not None and codec not in _LATIN:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            if codec.startswith("iso2022_jp"):
                return decode_iso2022_jp(data), codec
            # mislabelled: fall through to detection
    if data.isascii():
        seven = _seven_bit(data) if codec is None or codec == "ascii" else None
        if seven is not None:
            try:
                return data.decode(seven), seven
            except UnicodeDecodeError:
                if seven == "iso2022_jp":
                    return decode_iso2022_jp(data), seven
        return data.decode("ascii"), codec or "ascii"
    if _is_utf8(data):
        return data.decode("utf-8"), "utf-8"
    if codec in _LATIN:
        # RFC 6657 4: text labelled ASCII or Latin-1 with 8-bit bytes is most often Windows-1252;
        # double-byte CJK under such a label needs both detectors to say so.
        ng = _norm(chardetng_py.detect(data, allow_utf8=False))
        other = _norm(chardet.detect(data).get("encoding"))
        if ng in _MULTIBYTE and other in _MULTIBYTE and _decodes(data, other):
            return data.decode(other), other
        return data.decode("cp1252", errors="replace"), "cp1252"
    detected = guess_codec(data, tld)
    if detected is not None and _decodes(data, detected):
        return data.decode(detected), detected
    fallback = detected or codec or "cp1252"
    return data.decode(fallback, errors="replace"), fallback


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?(.*?)\?=")


def decode_words(raw: str, tld: str | None = None) -> str:
    """An RFC 2047 header value (or raw 8-bit, as some Chinese clients send; or raw 7-bit
    ISO-2022-JP, as Japanese ones do) as text."""
    out: list[str] = []
    try:
        parts = decode_header(raw)
    except Exception:  # noqa: BLE001 - a broken encoded word: keep the header as it came
        parts = [(raw, None)]
    for value, label in parts:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogateescape")
            out.append(
                decode_bytes(data, None, tld)[0]
                if not data.isascii() or b"\x1b" in data or b"~{" in data
                else value
            )
        else:
            out.append(decode_bytes(value, label, tld)[0])
    text = "".join(out)
    if "=?" in text:
        text = _ENCODED_WORD.sub(_lenient_word, text)
    return re.sub(r"\s+", " ", text).strip()


def _lenient_word(match: re.Match[str]) -> str:
    """An encoded word the strict parser left alone (a '?' in it, no space around it)."""
    label, kind, payload = match.groups()
    try:
        if kind in "Bb":
            data = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            data = quopri.decodestring(
                payload.replace("_", " ").encode("ascii", "replace"), header=True
            )
    except (ValueError, binascii.Error):
        return match.group(0)
    return decode_bytes(data, label)[0]


def _raw_header(msg: Message, name: str) -> str | None:
    lowered = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == lowered:
            return re.sub(r"\r?\n[ \t]+", " ", str(value))
    return None


def header(msg: Message, name: str, tld: str | None = None) -> str:
    raw = _raw_header(msg, name)
    return decode_words(raw, tld) if raw is not None else ""


# --- HTML -------------------------------------------------------------------------------------

_BLOCKS = (
    "p", "div", "table", "tr", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
)


_BLOCK_SET = frozenset(_BLOCKS)
# What kefu converts of an HTML part: the customer's words are at its top, the raw message is kept
# whole, and Python's HTML parser takes seconds a megabyte.
MAX_HTML = 256 * 1024


def _is_quote(tag: Tag) -> bool:
    """Quoted history in HTML replies: Gmail's gmail_quote, Thunderbird/Apple's <blockquote
    type=cite>, Outlook's divRplyFwdMsg (everything after #appendonsend is the quoted mail)."""
    classes = tag.get("class") or ()
    return (
        (tag.name == "div" and ("gmail_quote" in classes or "moz-cite-prefix" in classes))
        or (tag.name == "blockquote" and tag.get("type") == "cite")
        or tag.get("id") == "divRplyFwdMsg"
    )


def _visible_text(root: Tag) -> str:
    """The text a mail client shows: line breaks around blocks and at <br>, bullets for list
    items, a link's address after its words. One pass over the tree, without a stack of Python
    calls (mail nests tags a thousand deep) and without inserting into it (bs4 finds a node's
    place among its siblings by a linear search: inserting before each of thousands of table rows
    took minutes on a 5 MB newsletter)."""
    out: list[str] = []
    stack: list[tuple[PageElement, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if isinstance(node, Tag):
            name = node.name
            if leaving:
                if name == "a":
                    href = str(node.get("href", ""))
                    if href.startswith(("http://", "https://")) and node.get_text(
                        strip=True
                    ) not in (href, ""):
                        out.append(f" ({href})")
                if name in _BLOCK_SET:
                    out.append("\n")
                continue
            if name == "br":
                out.append("\n")
                continue
            if name in _BLOCK_SET:
                out.append("\n")
            if name == "li":
                out.append("• ")
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.contents))
        elif type(node) in (NavigableString, CData):
            out.append(str(node))
    return "".join(out)


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
        # One pass over the tree for all the quote markers (a CSS select per marker walked it
        # four times).
        for tag in soup.find_all(_is_quote):
            if not tag.decomposed:
                tag.decompose()
    lines = [
        re.sub(r"[ \t\u00a0\u3000]+", " ", line).strip()
        for line in _visible_text(soup).splitlines()
    ]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- structure --------------------------------------------------------------------------------

# A multipart whose boundary is missing or never appears (Apple Mail sends such mail): its body is
# read as one text part, the way other mail clients show it.
_BROKEN_MULTIPART = (
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _defects(msg: Message) -> list[MessageDefect]:
    found: list[MessageDefect] = []
    for part in msg.walk():
        found.extend(part.defects)
    return found


_CHUNK = 256 * 1024


def _payload(part: Message) -> bytes:
    raw = part.get_payload()
    if (
        isinstance(raw, str)
        and len(raw) > _CHUNK
        and part.get("Content-Transfer-Encoding", "").strip().lower() == "base64"
    ):
        return _b64_in_chunks(raw)
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken transfer encoding: the bytes as they came
        payload = part.get_payload()
        payload = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else None
    return payload if isinstance(payload, bytes) else b""


def _b64_in_chunks(text: str) -> bytes:
    """A large base64 body decoded a quarter-megabyte at a time: one C call over megabytes holds
    the GIL for tens of milliseconds, and kefu parses in a thread beside the event loop."""
    out = bytearray()
    start = 0
    while start < len(text):
        end = min(len(text), start + _CHUNK)
        if end < len(text):
            end = text.rfind("\n", start, end) + 1 or end
        chunk = "".join(text[start:end].split())
        if chunk:
            try:
                out += binascii.a2b_base64(chunk.encode("ascii", "replace"))
            except binascii.Error:
                out += binascii.a2b_base64(chunk.encode("ascii", "replace") + b"===")
        start = end
    return bytes(out)


def _text_of(part: Message, tld: str | None) -> tuple[str, str]:
    try:
        label = part.get_content_charset()
    except Exception:  # noqa: BLE001 - an undecodable RFC 2231 charset parameter
        label = None
    return decode_bytes(_payload(part), label, tld)


def _filename(part: Message, notes: list[str] | None = None) -> str | None:
    try:
        name = part.get_filename()  # RFC 2231 parameters (filename*=) are decoded by the package
    except Exception:  # noqa: BLE001 - a broken RFC 2231 value: fall back to the plain one
        name = None
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
    # A file name is the sender's text: no path, no NUL or other control characters (%00 in an
    # RFC 2231 value decodes to one), which no file system takes.
    cleaned = _CONTROL.sub("", name).replace("/", "_").replace("\\", "_").strip()
    if cleaned != name.strip() and notes is not None:
        notes.append("unsafe_filename")
    return cleaned or None


def email_collapse(value: tuple[str | None, str | None, str]) -> str:
    charset, _lang, text = value
    data = text.encode("latin-1", "surrogateescape")
    return decode_bytes(data, charset or "utf-8")[0]


@dataclass
class _Body:
    tld: str | None = None
    # Text parts in the order a mail client shows them: (is_html, text)
    texts: list[tuple[bool, str]] = field(default_factory=list)
    attachments: list[Part] = field(default_factory=list)
    charset: str | None = None
    dsn: list[Message] = field(default_factory=list)
    original_headers: Message | None = None
    notes: list[str] = field(default_factory=list)


def _is_attachment(part: Message, ctype: str, disposition: str) -> bool:
    if disposition == "attachment":
        return True
    return ctype.split("/")[0] not in ("text", "multipart") or (
        disposition == "inline"
        and ctype not in ("text/plain", "text/html")
        and _filename(part) is not None
    )


def _has_text(part: Message, tld: str | None) -> bool:
    return bool(_text_of(part, tld)[0].strip())


def _alternative(children: list[Message], tld: str | None) -> list[Message]:
    """RFC 2046 5.1.4: one of the alternatives. kefu prefers plain text, but not an empty plain
    part next to an HTML one (the customer's words are in the HTML then)."""
    plain = [c for c in children if c.get_content_type() == "text/plain" and _has_text(c, tld)]
    if plain:
        return plain[-1:]
    rich = [c for c in children if c.get_content_type() == "text/html" or c.is_multipart()]
    return rich[-1:] or children[-1:]


def _subparts(part: Message) -> list[Message] | None:
    """The parts of a multipart or message/* part (typeshed types a payload list as holding
    strings too; the parser puts only messages there)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return None
    return [p for p in payload if isinstance(p, Message)]


def _walk(part: Message, body: _Body) -> None:
    ctype = part.get_content_type()
    if ctype == "message/delivery-status":
        # RFC 3464: per-recipient fields; the package parses each block as headers
        blocks = _subparts(part)
        if blocks is not None:
            body.dsn.extend(blocks)
        return
    if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
        inner = _subparts(part)
        if inner:
            body.original_headers = inner[0]
        elif ctype != "message/rfc822":
            raw = _payload(part)
            if raw:
                body.original_headers = BytesParser(policy=policy.compat32).parsebytes(
                    raw, headersonly=True
                )
        if ctype == "message/rfc822" and inner:
            body.attachments.append(
                Part(_filename(part) or "message.eml", ctype, inner[0].as_bytes(policy=policy.SMTP))
            )
        return
    if part.is_multipart():
        children = _subparts(part)
        assert children is not None
        if ctype == "multipart/alternative":
            children = _alternative(children, body.tld)
        # multipart/mixed, related, report, ...: every inline text part, in order (RFC 2046 5.1.3)
        for child in children:
            _walk(child, body)
        return
    disposition = (part.get_content_disposition() or "").lower()
    if _is_attachment(part, ctype, disposition):
        body.attachments.append(
            Part(
                _filename(part, body.notes) or f"attachment{len(body.attachments) + 1}",
                ctype,
                _payload(part),
                inline=disposition == "inline",
            )
        )
        return
    if ctype.startswith("text/"):
        text, codec = _text_of(part, body.tld)
        body.texts.append((ctype == "text/html", text))
        body.charset = body.charset or codec


# --- lenient reading ------------------------------------------------------------------------------

_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_MBOX_FROM = re.compile(rb"^From \S+")


def _repair_headers(raw: bytes) -> tuple[bytes, list[str]]:
    """Mail other helpdesks read although its header section is not RFC 5322: an mbox "From "
    line or a line of text before the headers, and a folded header whose continuation line is not
    indented. Returns the repaired bytes and what was repaired."""
    repaired: list[str] = []
    # Only the header section is looked at: splitting a 5 MB body into lines costs for nothing.
    blank = re.search(rb"\r?\n\r?\n", raw)
    cut = blank.end() if blank else len(raw)
    head, rest = raw[:cut], raw[cut:]
    lines = head.split(b"\n")
    # Leading lines that are not headers (an mbox separator, "---- Original email message ----")
    skip = 0
    while skip < min(len(lines), 5) and lines[skip].strip() and not _HEADER_LINE.match(lines[skip]):
        skip += 1
    if skip and skip < len(lines) and _HEADER_LINE.match(lines[skip]):
        if not (skip == 1 and _MBOX_FROM.match(lines[0])):
            repaired.append("text_before_headers")
        lines = lines[skip:]
    else:
        skip = 0
    end = next((n for n, line in enumerate(lines) if not line.rstrip(b"\r")), len(lines))
    n = 1
    while n < end:
        if lines[n][:1].isspace() or _HEADER_LINE.match(lines[n]):
            n += 1
            continue
        # RFC 5322 2.2.3: a continuation line starts with white space. A run of lines that are
        # not header fields, with header fields after it, is a folded value that lost its indent;
        # a run that reaches the blank line is the body, missing its separator.
        run = n
        while run < end and not lines[run][:1].isspace() and not _HEADER_LINE.match(lines[run]):
            run += 1
        if run < end:
            for k in range(n, run):
                lines[k] = b" " + lines[k]
            if "unindented_folding" not in repaired:
                repaired.append("unindented_folding")
        n = run + 1
    if not repaired and not skip:
        return raw, []
    return b"\n".join(lines) + rest, repaired


_DELIMITER = re.compile(
    r"^--([0-9A-Za-z'()+_,./:=?\- ]{1,69}[0-9A-Za-z'()+_,./:=?\-])[ \t]*\r?$", re.MULTILINE
)


def _boundary_in_body(msg: Message) -> Message | None:
    """A multipart without its boundary parameter (Apple Mail) or with one its body never uses:
    the first delimiter line in the body (RFC 2046 5.1.1) names the real boundary."""
    payload = msg.get_payload()
    if not isinstance(payload, str):
        return None
    found = _DELIMITER.search(payload)
    if found is None:
        return None
    boundary = found.group(1).removesuffix("--")
    lines = [
        f"{key}: {value}" for key, value in (msg.raw_items())
        if key.lower() != "content-type"
    ]
    lines.append(f'Content-Type: {msg.get_content_type()}; boundary="{boundary}"')
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    raw = head + b"\r\n\r\n" + payload.encode("utf-8", "surrogateescape")
    reparsed = BytesParser(policy=policy.compat32).parsebytes(raw)
    if not reparsed.is_multipart() or any(
        isinstance(d, _BROKEN_MULTIPART) for d in reparsed.defects
    ):
        return None
    return reparsed


def _single_part(msg: Message) -> EmailMessage:
    """A multipart whose parts cannot be found, read as the one text part it holds."""
    raw = msg.get_payload()
    text = raw if isinstance(raw, str) else ""
    if isinstance(raw, list):
        text = "\n".join(p.as_string() if isinstance(p, Message) else p for p in raw)
    charset = msg.get_param("charset") if isinstance(msg.get_param("charset"), str) else None
    part = EmailMessage(policy=policy.default)
    subtype = (
        "html" if re.search(r"<(html|body|div|p|br)\b", text[:4096], re.IGNORECASE) else "plain"
    )
    part["Content-Type"] = f"text/{subtype}" + (f'; charset="{charset}"' if charset else "")
    cte = msg.get("Content-Transfer-Encoding")
    if cte:
        part["Content-Transfer-Encoding"] = str(cte)
    part.set_payload(text)
    return part


_ANY_ADDRESS = re.compile(r"[A-Za-z0-9._%+\-!#$&'*/=?^`{|}~]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")


def _usable(address: str) -> bool:
    return (
        "@" in address
        and " " not in address
        and not address.startswith("@")
        and not address.endswith("@")
    )


def _sender(msg: Message) -> tuple[str, str, str | None]:
    """(address, display name, how it was found if not as the one From address). Every From
    header, each of its addresses (a first one may be empty), RFC 2047 words in the address
    (RFC 2047 5 forbids them, senders do it anyway), a bare address in the display name; then
    Reply-To and Sender."""
    first = True
    for name in ("From", "Reply-To", "Sender"):
        values = _all_headers(msg, name)
        for value in values:
            decoded = (
                _ENCODED_WORD.sub(_lenient_word, value) if "=?" in value and "@" in value else value
            )
            for display, given in getaddresses([decoded]):
                address = given.strip().lower()
                if _usable(address):
                    how = (
                        None
                        if first
                        else ("from_second_address" if name == "From" else name.lower())
                    )
                    if name == "From" and len(values) > 1 and how is None:
                        how = "from_header_twice"
                    return address, display, how
                first = False
            found = _ANY_ADDRESS.search(decoded)
            if found:
                display = decoded[: found.start()].strip().strip('"<').strip()
                return (
                    found.group(0).lower().strip("."),
                    display,
                    "from_text" if name == "From" else name.lower(),
                )
            first = False
    return "", "", None


def _all_headers(msg: Message, name: str) -> list[str]:
    lowered = name.lower()
    items = msg.raw_items()
    return [re.sub(r"\r?\n[ \t]+", " ", str(v)) for k, v in items if k.lower() == lowered]


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

def parse_message(raw: bytes, *, own_address: str | None = None) -> ParsedMail:
    """Reads mail the way mail clients do, recovering what they recover (the repairs are listed
    in `defects`). Raises MalformedMail only when neither a sender nor any text can be found."""
    if not raw.strip():
        raise MalformedMail("empty message")
    repaired_raw, repairs = _repair_headers(raw)
    msg = BytesParser(policy=policy.compat32).parsebytes(repaired_raw)
    defects = _defects(msg)
    notes = [type(d).__name__ for d in defects] + repairs
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects) and not msg.keys():
        raise MalformedMail("no header section")
    addr, name, source = _sender(msg)
    if source is not None:
        notes.append(
            f"sender_{source.replace('-', '_')}"
            if source.startswith("from_")
            else f"sender_from_{source.replace('-', '_')}"
        )
    tld = addr.rsplit(".", 1)[-1] if "@" in addr else None
    body = _Body(tld=tld)
    if msg.get_content_maintype() == "multipart" and any(
        isinstance(d, _BROKEN_MULTIPART) for d in msg.defects
    ):
        found = _boundary_in_body(msg)
        if found is not None:
            notes.append("boundary_found_in_body")
            msg = found
            _walk(msg, body)
        else:
            notes.append("read_as_single_part")
            _walk(_single_part(msg), body)
    else:
        _walk(msg, body)
    notes += body.notes
    if any(is_html and len(t) > MAX_HTML for is_html, t in body.texts):
        notes.append("html_truncated")
    texts = [html_to_text(t[:MAX_HTML]) if is_html else t.strip() for is_html, t in body.texts]
    texts = [t for t in texts if t]
    from_html = bool(body.texts) and all(is_html for is_html, t in body.texts if t.strip())
    full = "\n\n".join(texts).replace("\r\n", "\n").strip()
    if not addr:
        if not full:
            raise MalformedMail("no sender address in From, Reply-To or Sender, and no text")
        addr = UNKNOWN_SENDER
        notes.append("no_sender")
    stripped = strip_reply(full)
    subject = header(msg, "Subject", tld)
    failed, status = _bounce(msg, body)
    noise = noise_of(msg, addr, own_address.lower() if own_address else None)
    if failed:
        noise = "bounce"
    message_id = normalize_msgid(header(msg, "Message-ID")) or synthetic_msgid(raw)
    in_reply_to = msgid_list(header(msg, "In-Reply-To"))
    references = msgid_list(header(msg, "References"))
    if body.original_headers is not None and failed:
        # The returned headers name the mail that bounced (RFC 3462): the reference that counts.
        original = normalize_msgid(str(body.original_headers.get("Message-ID", "")))
        if original and original not in references:
            references.append(original)
    return ParsedMail(
        message_id=message_id,
        sender=addr,
        display_name=(decode_words(name, tld) or None) if name else None,
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
        language=text_language(stripped.text + " " + subject),
        charset=body.charset,
        defects=tuple(dict.fromkeys(notes)),
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
