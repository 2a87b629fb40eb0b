"""An Outbound intent -> an RFC 5322 message: threading headers from the messages it answers,
the "[#42]" subject token, text and HTML from templates."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from bot.intents import Greeting, Outbound, Reply, Threaded
from bot.language import CJK, language_of
from channels.mail_parse import normalize_msgid

# Reply prefixes and kefu's own token, stripped before a new "Re: … [#id]" is put on
# (RFC 5322 3.6.5).
_PREFIX = re.compile(
    r"^\s*((re|fw|fwd|aw|sv|回复|答复|回覆|转发)\s*(\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE
)
_TOKEN = re.compile(r"\s*\[#\d+\]")


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    name: str


def base_subject(subject: str) -> str:
    return _PREFIX.sub("", _TOKEN.sub("", subject)).strip()


def reply_language(out: Outbound) -> str:
    """The customer's language if the sender said it, else the language the agent wrote in."""
    written = "zh" if CJK.search(out.text) else "en"
    return language_of(out.intent.language or "", written)


def message_id_for(out: Outbound, domain: str) -> str:
    """Stable across retries of one outbox row, so a re-send after a crash is the same message to
    the customer's client (RFC 5322 3.6.4: the id is unique to one message)."""
    seed = f"{out.dedupe_key}|{out.conversation_id}|{out.customer_id}|{out.text}"
    return f"kefu.{hashlib.sha256(seed.encode()).hexdigest()[:32]}@{domain}"


def title_of(out: Outbound) -> str:
    """The subject the customer gave the thread this message answers ("" when none)."""
    return (out.intent.title or "") if isinstance(out.intent, Threaded) else ""


def _angle(ids: list[str]) -> str:
    return " ".join(f"<{normalize_msgid(i)}>" for i in ids if normalize_msgid(i))


class Composer:
    def __init__(self, templates: Path, sender: Identity) -> None:
        self.sender = sender
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(templates)),
            autoescape=select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=False
            ),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
        )

    def _render(self, lang: str, name: str, context: dict[str, Any]) -> str:
        return self.env.get_template(f"{lang}/{name}").render(**context)

    def compose(self, out: Outbound, *, now: Any) -> tuple[EmailMessage, str]:
        """(message, its Message-ID without brackets)."""
        lang = reply_language(out)
        domain = self.sender.address.rsplit("@", 1)[-1]
        msgid = message_id_for(out, domain)
        context = {
            "text": out.text,
            "team": self.sender.name,
            "conversation_id": out.conversation_id if out.conversation_id is not None else "",
            "subject": base_subject(title_of(out)),
        }
        msg = EmailMessage()
        msg["From"] = Address(self.sender.name, addr_spec=self.sender.address)
        msg["To"] = out.address
        subject = self._render(lang, "email_subject.txt.j2", context).strip()
        if out.conversation_id is None:
            subject = _TOKEN.sub("", subject).strip()
        msg["Subject"] = subject
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = f"<{msgid}>"
        answers = out.intent.answers if isinstance(out.intent, Threaded) else ()
        references = list(answers)
        if answers:
            # RFC 5322 3.6.4: In-Reply-To is the parent's id (the last one answered); References
            # is the parent's References plus the parent's id: the whole chain, oldest first.
            msg["In-Reply-To"] = f"<{normalize_msgid(answers[-1])}>"
        if references:
            msg["References"] = _angle(references[-20:])
        # RFC 3834 5: kefu's answers are replies written by a person, not auto-generated;
        # acknowledgements and notices are marked so the customer's autoresponder stays quiet.
        # A greeting answers nothing: "auto-generated"; acknowledgements answer a message.
        msg["Auto-Submitted"] = (
            "no"
            if isinstance(out.intent, Reply)
            else "auto-generated"
            if isinstance(out.intent, Greeting)
            else "auto-replied"
        )
        msg.set_content(self._render(lang, "email_reply.txt.j2", context) + "\n", charset="utf-8")
        msg.add_alternative(
            self._render(lang, "email_reply.html.j2", context), subtype="html", charset="utf-8"
        )
        # After the body: set_content() drops any Content-* header set before it (RFC 3282).
        msg["Content-Language"] = "zh-CN" if lang == "zh" else "en"
        return msg, msgid
