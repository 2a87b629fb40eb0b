"""Ann's mail replies to a survey, as the receiving MX hands them over: one place for the headers
the survey tests share, so each test shows only the body it is about."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage

from bot.messages import Inbound
from channels.email import MailStore, to_inbound
from channels.mail_auth import AuthSettings

# The receiving MX vouches for the From domain: an unauthenticated From answers no survey.
AUTH = AuthSettings(authserv_ids=("mx.kefu.test",), verify_dkim=False)
GMAIL_QUOTE = (
    "\n\nOn Mon, 1 Mar 2027 at 10:00, Support <support@example.com> wrote:\n"
    "> How would you rate us, 1 to 5?\n"
)


def from_ann(
    message_id: str, subject: str = "Re: your order", sender: str = "Ann <ann@example.org>"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@example.com"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Authentication-Results"] = "mx.kefu.test; dmarc=pass header.from=example.org"
    return message


def received(message: EmailMessage, store: MailStore, at: datetime) -> Inbound:
    return to_inbound(
        message.as_bytes(), store, own_address="support@example.com", now=at, auth=AUTH
    )
