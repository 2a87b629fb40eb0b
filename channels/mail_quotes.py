"""What the customer wrote now: quoted history and signatures cut from a reply's plain text.

Table-driven: each client's reply header or separator is one pattern; the earliest match wins.
Nothing is lost by cutting: the raw message is kept beside the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lines that start the quoted history, by the client that writes them.
# Each pattern is matched against one line, or against a line joined with the next one (Gmail
# wraps long "On … wrote:" headers).
QUOTE_HEADERS: dict[str, re.Pattern[str]] = {
    # Gmail / Thunderbird / Apple Mail (en): "On Mon, 1 Jan 2024 at 10:00, Ann <a@b.c> wrote:"
    "on_wrote": re.compile(r"^\s*On\b.{4,300}\bwrote\s*:\s*$", re.IGNORECASE),
    # Thunderbird (older): "Ann wrote on 01/01/2024 10:00:"; "Ann <a@b.c> wrote:"
    "wrote_on": re.compile(
        r"^\s*\S.{0,200}(<[^<>\s]+@[^<>\s]+>|\d).{0,200}\bwrote( on .{4,80})?:\s*$"
    ),
    # Gmail zh: "张三 <a@b.c> 于2024年1月1日周一 10:00写道：";
    # Apple Mail zh: "2024年1月1日 10:00，张三 <a@b.c> 写道：";
    # Thunderbird zh: "在 2024/1/1 10:00, 张三 写道:"
    "zh_wrote": re.compile(r"^\s*\S.{0,300}写道\s*[:：]\s*$"),
    # Outlook (en): "-----Original Message-----";
    # Thunderbird forward "-------- Original Message --------"
    # Foxmail (en): "------------------ Original ------------------"
    "original_message": re.compile(
        r"^\s*-{2,}[\s\u00a0]*Original( Message)?[\s\u00a0]*-{2,}\s*$", re.IGNORECASE
    ),
    # Foxmail / QQ Mail / NetEase / Outlook zh: "------------------ 原始邮件 ------------------",
    # "-----原始邮件-----"
    "zh_original": re.compile(r"^\s*-{2,}[\s\u00a0]*原始邮件[\s\u00a0]*-{2,}\s*$"),
    # Outlook desktop / web: a rule of underscores, then "From:" / "发件人:"
    "outlook_rule": re.compile(r"^\s*_{10,}\s*$"),
    # Outlook without a rule, Foxmail: the header block itself
    "from_block": re.compile(r"^\s*\*?(From|发件人|寄件者)\s*\*?\s*[:：].+$"),
    # Forwarded blocks
    "forwarded": re.compile(
        r"^\s*-{2,}\s*(Forwarded message|转发的邮件|Begin forwarded message)\s*-{0,}\s*:?\s*$",
        re.IGNORECASE,
    ),
}

# A "From:" line only starts the history when a "Sent:/Date:/发送时间:" line follows it closely.
_HEADER_FOLLOW = re.compile(
    r"^\s*\*?(Sent|Date|To|Subject|发送时间|时间|日期|收件人|主题|寄件日期)\s*\*?\s*[:：]",
    re.IGNORECASE,
)

# Signatures and client boilerplate: cut from the line on.
SIGNATURES: dict[str, re.Pattern[str]] = {
    # RFC 3676 section 4.3: "-- " alone on a line starts the signature
    "sig_dashes": re.compile(r"^-- ?$"),
    # QQ Mail / Foxmail put a rule of dashes above the signature
    "qq_rule": re.compile(r"^\s*-{10,}\s*$"),
    "sent_from": re.compile(
        r"^\s*(Sent from (my )?"
        r"(iPhone|iPad|Android|Samsung|Huawei|Mail for Windows|Outlook|Yahoo Mail)"
        r"|Get Outlook for (iOS|Android))\b.*$",
        re.IGNORECASE,
    ),
    "zh_sent_from": re.compile(
        r"^\s*(发自我的\s*(iPhone|iPad|手机|华为|小米)|从我的\s*(iPhone|iPad)\s*发送"
        r"|发自\s*(网易邮箱|QQ邮箱|手机QQ邮箱|Foxmail|WPS)|来自\s*(网易|QQ邮箱)).*$"
    ),
}


@dataclass(frozen=True, slots=True)
class Stripped:
    text: str
    cut: str | None  # which rule cut the history, for the log's meta
    signature: str | None


def _joined(lines: list[str], i: int) -> str:
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    return f"{lines[i].rstrip()} {nxt.strip()}"


def _quote_start(lines: list[str]) -> tuple[int, str] | None:
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        for name, pattern in QUOTE_HEADERS.items():
            if name == "from_block":
                if pattern.match(line) and any(
                    _HEADER_FOLLOW.match(x) for x in lines[i + 1 : i + 4]
                ):
                    return i, name
                continue
            if name == "outlook_rule":
                following = [x for x in lines[i + 1 : i + 4] if x.strip()]
                if (
                    pattern.match(line)
                    and following
                    and QUOTE_HEADERS["from_block"].match(following[0])
                ):
                    return i, name
                continue
            if pattern.match(line):
                return i, name
            if (
                name in ("on_wrote", "zh_wrote")
                and i + 1 < len(lines)
                and pattern.match(_joined(lines, i))
                and not lines[i + 1].lstrip().startswith(">")
            ):
                return i, name
        if line.lstrip().startswith(">") and all(
            not x.strip() or x.lstrip().startswith(">") for x in lines[i:]
        ):
            return i, "gt_quote"  # a trailing block of "> " lines (RFC 3676 quoting)
    return None


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _bottom_posted(lines: list[str]) -> list[str] | None:
    """A reply written under the quoted mail: at most a reply header ("On … wrote:"), a block of
    "> " lines, then the new text, with nothing quoted after it. Interleaved answers (quote,
    answer, quote, answer) are not this: they stay whole, questions and all."""
    marked = [n for n, line in enumerate(lines) if _quoted(line)]
    if not marked:
        return None
    first, last = marked[0], marked[-1]
    header = " ".join(x.strip() for x in lines[:first] if x.strip())
    if header and not any(
        QUOTE_HEADERS[name].match(header) for name in ("on_wrote", "wrote_on", "zh_wrote")
    ):
        return None  # the customer wrote above the quote: top-posted
    if any(x.strip() and not _quoted(x) for x in lines[first:last]):
        return None  # answers between quoted lines
    after = lines[last + 1 :]
    return after if any(x.strip() for x in after) else None


def _signature_start(lines: list[str]) -> tuple[int, str] | None:
    for i, line in enumerate(lines):
        for name, pattern in SIGNATURES.items():
            if pattern.match(line):
                return i, name
    return None


def strip_reply(text: str) -> Stripped:
    """The new part of a reply. Falls back to the whole text when cutting would leave nothing."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut: str | None = None
    below = _bottom_posted(lines)
    found = _quote_start(lines) if below is None else None
    if below is not None:
        lines, cut = below, "bottom_posted"
    elif found is not None:
        lines, cut = lines[: found[0]], found[1]
    signature: str | None = None
    sig = _signature_start(lines)
    if sig is not None and any(x.strip() for x in lines[: sig[0]]):
        lines, signature = lines[: sig[0]], sig[1]
    new = "\n".join(lines).strip()
    if not new:
        return Stripped(text.strip(), None, None)
    return Stripped(new, cut, signature)
