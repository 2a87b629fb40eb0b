"""What handlers see of a logged message and what they hand back: plain data, no session rows.

The pipeline (bot/pipeline.py) logs a message, then shows each observer a `Logged`: the message,
the verdict and routing decision, and snapshots of its customer and conversation. An observer
returns effects: messages to queue and row changes, which the pipeline applies in that same
transaction, in order, before the next observer runs. A handler never changes a row it was
shown, so no write depends on somebody remembering to flush it.

Observers run in `Phase` order (then in the order they were registered): the phase names why
one must come before another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from bot.intents import Outbound
from bot.lookup import Lookup
from bot.messages import Inbound


@dataclass(frozen=True, slots=True)
class Verdict:
    is_complaint: bool
    severity: str = "none"  # none | normal | high
    score: float = 0.0
    reasons: tuple[str, ...] = ()  # cue names, never the customer's words: they reach logs
    # The customer's own words that moved the model most ("失望", "waste"): for the staff view, not
    # for logs or reports.
    evidence: tuple[str, ...] = ()


NOT_A_COMPLAINT = Verdict(False)


@dataclass(frozen=True, slots=True)
class Decision:
    priority: str = "normal"  # low | normal | high | urgent
    assignee_id: int | None = None
    notify_staff: bool = False
    team: str | None = None
    # The conversation becomes a complaint with this message (it was not one before).
    new_complaint: bool = False
    # Move the conversation to `team` and `assignee_id` even though it has them already: it became
    # a complaint and complaints belong to another team.
    reassign: bool = False
    outside_hours: bool = False
    # When the team next opens (now, inside hours): what an acknowledgement promises at the latest.
    expected_response_by: datetime | None = None
    first_response_due: datetime | None = None
    resolution_due: datetime | None = None
    rule: int | None = None  # index of the rule that matched, for the log
    # The team's round-robin cursor moves to this staff member (the pipeline stores it).
    round_robin: int | None = None


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A customer as the message found them (after the message's own changes)."""

    id: int
    display_name: str | None = None
    language: str | None = None
    timezone: str | None = None
    tags: tuple[str, ...] = ()
    vip: bool = False
    marketing_consent: bool = False
    birthday_md: str | None = None
    forgotten_at: datetime | None = None
    merged_into: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A conversation as this message left it (threaded, routed, touched)."""

    id: int
    customer_id: int
    status: str = "open"
    team: str | None = None
    assignee: int | None = None
    priority: str = "normal"
    is_complaint: bool = False
    severity: str | None = None
    staff_thread: str | None = None
    reply_channel: str | None = None
    reply_address: str | None = None
    first_response_at: datetime | None = None
    first_response_due_at: datetime | None = None
    resolution_due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SlaDue:
    """A conversation's SLA clock: its due times and, while it waits on the customer, when the
    clock stopped. The pipeline hands it to the resume plug-in when a pending conversation's
    customer answers, and stores what comes back."""

    paused_at: datetime | None
    first_response_due_at: datetime | None
    resolution_due_at: datetime | None
    first_response_at: datetime | None

    @property
    def next_due_at(self) -> datetime | None:
        """The due time that escalates next: the first response's until there is one."""
        return (
            self.first_response_due_at
            if self.first_response_at is None
            else self.resolution_due_at
        )


@dataclass(frozen=True, slots=True)
class Logged:
    """One fresh inbound message as logged: what observers see."""

    inbound: Inbound
    interaction_id: int
    customer: CustomerView
    conversation: ConversationView | None
    new_conversation: bool
    verdict: Verdict
    decision: Decision
    # The customer was created by this batch (first contact): nothing of theirs was stored before
    # it, so what the batch holds is all there is to know about them.
    new_customer: bool = False


# --- effects: what an observer wants done, applied by the pipeline in its transaction ---------


@dataclass(frozen=True, slots=True)
class Event:
    """A line in the unified log that is nobody's message: a system note, an answer recorded."""

    customer_id: int | None
    channel: str
    text: str
    meta: dict[str, Any]
    at: datetime
    conversation_id: int | None = None
    author_kind: str = "system"
    author_id: str | None = None


@dataclass(frozen=True, slots=True)
class Say:
    """kefu's own message to a customer: logged as the bot's (log_meta) and queued."""

    out: Outbound
    log_meta: dict[str, Any]
    at: datetime
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Feed:
    """How a staff feed post joins the post still waiting for the same place (channel, address,
    conversation): `text` is what it adds there, if that post's dedupe key starts with one of
    `into`, it has no attachments, the channel has not taken it for the wire yet, and the two
    together stay within `limit` UTF-16 units (None: the channel takes any length). Otherwise
    the post is queued on its own."""

    text: str
    into: tuple[str, ...]
    limit: int | None


@dataclass(frozen=True, slots=True)
class Post:
    """A staff post to queue (not a message in the customer's log): a mirror, an alert, a board
    line. `feed`: first offered to the post waiting for the same place (see Feed). `once`: a
    (channel, key, conversation id) claimed in processed_messages in the same transaction; the
    post is queued only by the first claim (the board line of a conversation and agent)."""

    out: Outbound
    interaction_id: int | None = None
    feed: Feed | None = None
    once: tuple[str, str, int | None] | None = None


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """An acknowledgement went to (channel, address) about the conversation: the rate limit
    counts it."""

    conversation_id: int
    channel: str
    address: str
    at: datetime


@dataclass(frozen=True, slots=True)
class WithdrawConsent:
    """The customer's marketing consent ends; greetings not yet sent are cancelled with `reason`.
    `event` is logged with the number cancelled added to its meta ("cancelled")."""

    customer_id: int
    reason: str
    at: datetime
    event: Event


@dataclass(frozen=True, slots=True)
class RaiseSeverity:
    """The conversation's complaint severity becomes `severity` (the observer saw it was lower)."""

    conversation_id: int
    severity: str


@dataclass(frozen=True, slots=True)
class ComplaintReasons:
    """Reasons (cue names) the conversation was flagged for; each kept once per conversation."""

    conversation_id: int
    reasons: tuple[str, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Mail to (channel, address) cannot be delivered: the identity is marked unreachable."""

    channel: str
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class SurveyAnswered:
    """A checked answer to an open survey (handlers/survey.py checks it, the pipeline stores it)."""

    survey_id: int
    score: int
    comment: str | None
    channel: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Audited:
    """An entry in the audit log (who, what, on what; `detail` as JSON), at the time it is
    written."""

    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HealthScores:
    """Customers' churn-risk rows to store in customer_health (handlers/churn.py): one dict per
    customer, with customer_id and every column of storage.insight.HEALTH_COLUMNS."""

    rows: tuple[dict[str, Any], ...]


Effect = (
    Event
    | Say
    | Post
    | Acknowledged
    | WithdrawConsent
    | RaiseSeverity
    | ComplaintReasons
    | Unreachable
    | SurveyAnswered
    | HealthScores
    | Audited
)
Effects = Sequence[Effect]


class Phase(IntEnum):
    """When an observer runs, relative to the others; equal phases keep their registration order."""

    # Staff see the customer's message first: every later staff post about it (a complaint flag,
    # an SLA warning) goes to the same chat after it, and the outbox sends one address's rows in
    # order.
    MIRROR = 10
    # Channel events that change what kefu knows of an address (a bounce marks it unreachable).
    CHANNEL = 20
    # Opt-out before anything that might write to the customer or count their consent.
    CONSENT = 30
    # Complaint flags before acknowledgements: the acknowledgement promises the flagged due time.
    COMPLAINT = 40
    ACKNOWLEDGE = 50
    SURVEY = 60
    # Insight scores what care has decided about the message (complaint severity, opt-out).
    INSIGHT = 70


# An observer looks at one logged message and returns what it wants done (or None for nothing).
# Its first argument is a Lookup (bot/lookup.py) of the ingest transaction: reads only, plain
# data; every write goes back as effects. An observer may also have
# `observe_batch(lookup, notes)`: then it is called once per batch with all the batch's messages
# in order, after the per-message observers, instead of once per message.
Observer = Callable[[Lookup, Logged], Awaitable[Effects | None]]
