"""The data model: one unified interaction log per customer, and the tables around it."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC: SQLite has no time zones, PostgreSQL's
    timestamptz would convert on the way out; one rule for both keeps comparisons honest."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; kefu stores UTC only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


# Integer primary keys: BIGINT on PostgreSQL, but INTEGER on SQLite so it stays the rowid alias.
PK = BigInteger().with_variant(Integer(), "sqlite")


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    birthday: Mapped[date | None] = mapped_column(Date)
    # "MM-DD" of the birthday: the campaign planner finds today's birthdays by index.
    birthday_md: Mapped[str | None] = mapped_column(String(5), index=True)
    timezone: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    vip: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    preferred_channel: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    forgotten_at: Mapped[datetime | None]

    identities: Mapped[list[Identity]] = relationship(back_populates="customer")


class Identity(Base):
    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    # Text, not VARCHAR(n): what a channel accepts (a long webhook user id) must fit on
    # PostgreSQL as on SQLite; the channels bound their ids so the unique index holds them.
    address: Mapped[str] = mapped_column(Text)
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    unreachable_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="identities")


# Staff roles, lowest first: each has everything of the roles before it (handlers/roles.py).
ROLES = ("agent", "lead", "admin")


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    telegram_user_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    on_duty: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# A conversation's statuses; the open ones are live (a customer's new message joins them).
STATUSES = ("open", "pending", "resolved", "closed")
OPEN_STATUSES = ("open", "pending")
# A customer writing into a resolved conversation reopens it; a closed one stays closed.
REOPENABLE = ("open", "pending", "resolved")


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_customer_status", "customer_id", "status"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    is_complaint: Mapped[bool] = mapped_column(Boolean, default=False)
    assignee: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    staff_thread: Mapped[str | None] = mapped_column(String(64))
    # Where an agent's answer goes: the channel and address of the customer's last inbound message.
    reply_channel: Mapped[str | None] = mapped_column(String(32))
    reply_address: Mapped[str | None] = mapped_column(Text)
    sla_due_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    # --- complaints: routing, SLA, lifecycle (issue #5) ---
    team: Mapped[str | None] = mapped_column(String(64))
    # The highest complaint severity seen in the conversation: normal | high.
    severity: Mapped[str | None] = mapped_column(String(8))
    first_response_due_at: Mapped[datetime | None]
    resolution_due_at: Mapped[datetime | None]
    # How many times it was resolved: numbers the survey of each resolution.
    resolutions: Mapped[int] = mapped_column(Integer, default=0)
    closed_at: Mapped[datetime | None]
    # Pending on the customer with [sla] pause_while_pending: the SLA clocks stopped at this moment.
    sla_paused_at: Mapped[datetime | None]


class Interaction(Base):
    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_interaction_channel_external_id"),
        Index("ix_interactions_created_at", "created_at"),
        # A customer's log by direction and time: the churn score's message rates and last contact
        # are read from this index alone (storage/insight.py), a million customers in one pass.
        Index("ix_interactions_customer", "customer_id", "direction", "created_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    channel: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))  # in | out | note | event
    author_kind: Mapped[str] = mapped_column(String(8))  # customer | agent | bot | system
    # Text: a channel's ids (a 600-character Message-ID, a long webhook user id) fit on every
    # database.
    author_id: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    external_id: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# An outbox row's statuses. WAITING: not sent and not being sent (claimed when due); UNSENT: those
# and the rows being sent (claimed, not yet confirmed).
OUTBOX_STATUSES = ("pending", "sending", "deferred", "failed", "sent", "dead")
OUTBOX_WAITING = ("pending", "deferred", "failed")
OUTBOX_UNSENT = (*OUTBOX_WAITING, "sending")


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    # Random per row and kept across its retries: with dedupe_key it makes the receiver's
    # idempotency key (OutboxRow.idempotency_key), which a second installation or a restored
    # backup reusing row ids ("reply-17") must never repeat.
    nonce: Mapped[str | None] = mapped_column(String(32), default=lambda: uuid.uuid4().hex)
    # pending | sending | sent | failed (waiting for a retry) | deferred (waiting its turn behind
    # a rate limit or quiet hours; not a failure) | dead
    status: Mapped[str] = mapped_column(String(8), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # sends made (or maybe made)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    # Set by each claim; every later change of the row names it, so a worker whose lease ran out
    # cannot overwrite the claim of the worker that took the row over.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    interaction_id: Mapped[int | None] = mapped_column(ForeignKey("interactions.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    # The id the channel gave the sent message (an email Message-ID): replies thread by it.
    external_id: Mapped[str | None] = mapped_column(String(500), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    @property
    def idempotency_key(self) -> str:
        return f"{self.dedupe_key}.{self.nonce}" if self.nonce else self.dedupe_key


class CampaignDelivery(Base):
    __tablename__ = "campaign_deliveries"
    __table_args__ = (
        UniqueConstraint("campaign", "occasion", "customer_id", name="uq_campaign_delivery"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    campaign: Mapped[str] = mapped_column(String(32))
    occasion: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | skipped
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- campaigns (issue #6) ---
    # status also: expired (the customer's day ended before it went out) | cancelled (opt-out).
    channel: Mapped[str | None] = mapped_column(String(32))
    send_at: Mapped[datetime | None]
    # The end of the greeting's local day: a greeting still unsent then is never sent.
    expires_at: Mapped[datetime | None] = mapped_column(index=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ChannelState(Base):
    """Small durable state a channel keeps between runs (an IMAP folder's UIDVALIDITY and last
    UID)."""

    __tablename__ = "channel_state"
    __table_args__ = (UniqueConstraint("channel", "key", name="uq_channel_state"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SchedulerTick(Base):
    """A scheduled job's run for one tick, claimed before it runs: with several processes (and a
    leader that may change mid-tick) each job still runs once per tick."""

    __tablename__ = "scheduler_ticks"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    tick: Mapped[datetime] = mapped_column(primary_key=True)
    process: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Telegram channel (issue #3) ------------------------------------------------------------


class TelegramLink(Base):
    """A single-use `t.me/<bot>?start=<token>` deep link that ties a Telegram user to a customer."""

    __tablename__ = "telegram_links"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    # Random, unguessable; Telegram allows 64 characters of [A-Za-z0-9_-] in a start payload.
    token: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(64))  # the Telegram user id that used it


class ProcessedMessage(Base):
    """Idempotency keys of channel messages that act rather than get logged (a staff-group command):
    a redelivered update finds its key here and does nothing twice."""

    __tablename__ = "processed_messages"
    __table_args__ = (UniqueConstraint("channel", "key", name="uq_processed_message"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(200))
    # The conversation it acted on: a reply to this message belongs to the same conversation.
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)


# --- complaints: routing, SLA, survey (issue #5) --------------------------------------------


class RoutingCursor(Base):
    """Round-robin state: the staff member of a team assigned last."""

    __tablename__ = "routing_cursors"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    team: Mapped[str] = mapped_column(String(64), unique=True)
    last_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ComplaintReason(Base):
    """The cues a conversation's complaints fired, one row each: reports count them in SQL."""

    __tablename__ = "complaint_reasons"
    __table_args__ = (UniqueConstraint("conversation_id", "reason", name="uq_complaint_reason"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    reason: Mapped[str] = mapped_column(String(120), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class SlaBreach(Base):
    """One per conversation, target and resolution cycle: the escalation is posted once."""

    __tablename__ = "sla_breaches"
    __table_args__ = (
        UniqueConstraint("conversation_id", "target", "cycle", name="uq_sla_breach"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    target: Mapped[str] = mapped_column(String(16))  # first_response | resolution
    cycle: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[str] = mapped_column(String(16))
    team: Mapped[str | None] = mapped_column(String(64))
    assignee: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    due_at: Mapped[datetime]
    breached_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Acknowledgement(Base):
    """When a customer was last told "we got it" (outside hours): the once-per-acknowledge_every
    check reads this by index instead of searching the outbox, which only grows."""

    __tablename__ = "acknowledgements"
    __table_args__ = (
        Index("ix_acknowledgements_conversation", "conversation_id", "at"),
        Index("ix_acknowledgements_address", "channel", "address", "at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime] = mapped_column(index=True)


class Survey(Base):
    """满意度调查: one per resolution of a conversation, asked on resolve, answered 1-5."""

    __tablename__ = "surveys"
    __table_args__ = (
        UniqueConstraint("conversation_id", "resolution", name="uq_survey_resolution"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    resolution: Mapped[int] = mapped_column(Integer)
    # The agent who held the conversation when it was resolved: CSAT per agent.
    assignee: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    channel: Mapped[str] = mapped_column(String(32))
    asked_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]
    answer_channel: Mapped[str | None] = mapped_column(String(32))
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)


# --- customer insight: health score, churn warning (issue #14) ------------------------------------


class CustomerHealth(Base):
    """A customer's churn-risk score (0-100, higher is worse) with the reasons behind it, kept up
    to date by the pipeline (each message) and by a periodic full recompute."""

    __tablename__ = "customer_health"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    score: Mapped[int] = mapped_column(Integer, default=0, index=True)
    band: Mapped[str] = mapped_column(String(8), default="ok")  # ok | watch | at_risk
    # [{"code": "open_complaints", "points": 40, ...facts}], biggest first.
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    last_contact_at: Mapped[datetime | None]
    # Exponentially decayed counts of the customer's messages (half-lives 7 and 56 days) as of
    # rate_at: "writing more often than usual" updates in O(1) per message.
    rate_fast: Mapped[float] = mapped_column(Float, default=0.0)
    rate_slow: Mapped[float] = mapped_column(Float, default=0.0)
    rate_at: Mapped[datetime | None]
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when the score crossed [insight] threshold and leads were told; cleared once it falls
    # below rearm_below, so the next crossing is a new warning (crossings counts them).
    alerted_at: Mapped[datetime | None]
    crossings: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
