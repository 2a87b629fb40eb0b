"""What a handler in the ingest path may read: a `Lookup`, never the session.

The pipeline shows observers, the router and the survey-answer check a `Lookup` of its
transaction (storage/lookup.py implements it on the session). It has reads only, each returning
plain data, so a handler cannot add, change, flush or delete anything: what it wants written goes
back as effects (bot/effects.py) or a Decision, which the pipeline applies. Reads see the
transaction as it stands: what the batch and earlier effects wrote is there.

The churn observer's reads (`health_batch`, one per pipeline batch, and `signals` for a warning)
return the customer-health values below; storage/insight.py fills them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # bot.effects names Lookup in its Observer type
    from bot.effects import ConversationView


@dataclass(frozen=True, slots=True)
class StaffView:
    """A staff member as routing and staff posts need them."""

    id: int
    name: str
    role: str = "agent"
    active: bool = True
    on_duty: bool = True
    telegram_user_id: int | None = None


@dataclass(frozen=True, slots=True)
class SurveyView:
    id: int
    conversation_id: int
    customer_id: int
    asked_at: datetime
    expires_at: datetime
    answered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HealthView:
    """What a segment asks of a customer's stored health row."""

    band: str
    last_contact_at: datetime | None


@dataclass(slots=True)
class Signals:
    """What a churn score is computed from, for one customer at one moment."""

    open_complaints: int = 0
    recent_complaints: int = 0
    high_severity_cues: list[str] = field(default_factory=list)
    high_severity: int = 0
    last_complaint_at: datetime | None = None
    worst_csat: int | None = None
    last_low_csat_at: datetime | None = None
    sla_breaches: int = 0
    identities: int = 0
    unreachable: int = 0
    opted_out: bool = False
    last_contact_at: datetime | None = None
    rate_fast: float = 0.0
    rate_slow: float = 0.0
    rate_at: datetime | None = None
    owner: int | None = None  # the assignee of their latest conversation
    conversation_id: int | None = None  # the conversation a lead should open


@dataclass(frozen=True, slots=True)
class Stored:
    """What customer_health holds for one customer, as the churn observer needs it."""

    rate_fast: float
    rate_slow: float
    rate_at: datetime | None
    last_contact_at: datetime | None
    opted_out: bool
    alerted_at: datetime | None
    crossings: int


@dataclass(frozen=True, slots=True)
class HealthRead:
    """What the churn observer reads of one customer of a batch: their stored row's reasons and
    values (none: no row yet), and their signals when it asked for them (else None)."""

    reasons: list[dict[str, Any]]
    stored: Stored | None
    signals: Signals | None


# Which complaint reasons name a high-severity cue worth showing (handlers.complaints knows).
IsSevere = Callable[[str], bool]


class Lookup(Protocol):
    """Reads of the transaction a handler runs in; nothing here writes."""

    # --- staff ---------------------------------------------------------------------------------
    async def staff_member(self, staff_id: int) -> StaffView | None: ...

    async def team_members(self, names: Sequence[str], *, on_duty: bool) -> Sequence[StaffView]:
        """Active staff by id (only those on duty; only those named, when names are given)."""
        ...

    async def leads(self, *, named: Sequence[str], among: Sequence[str]) -> Sequence[StaffView]:
        """Active leads by id: those named, or else every lead and admin (of `among`)."""
        ...

    # --- routing -------------------------------------------------------------------------------
    async def last_assigned(self, team: str) -> int | None:
        """The staff id the team's last stored round-robin assignment went to."""
        ...

    async def open_counts(self, staff_ids: Sequence[int]) -> Mapping[int, int]:
        """Open and pending conversations per assignee, for those of `staff_ids` that have any."""
        ...

    def memo(self, name: str) -> dict[Any, Any]:
        """A handler's own scratch values for as long as the transaction (the router's picks in
        a batch, before the pipeline stores them). Not the database."""
        ...

    # --- customers and conversations -------------------------------------------------------------
    async def conversation(self, conversation_id: int) -> ConversationView | None: ...

    async def latest_reopenable(self, customer_id: int) -> int | None:
        """The customer's newest conversation that a message of theirs would reopen."""
        ...

    async def holders(self, channel: str, addresses: Sequence[str]) -> list[tuple[str, int]]:
        """(address, customer id) of each of `addresses` that is an identity on `channel`."""
        ...

    async def channels_of(self, customer_id: int) -> set[str]:
        """The channels the customer has an address on."""
        ...

    async def health(self, customer_id: int) -> HealthView | None: ...

    # --- messages --------------------------------------------------------------------------------
    async def acked_since(
        self, conversation_id: int, channel: str, address: str, since: datetime
    ) -> bool:
        """An acknowledgement went out about the conversation, or to the address, after `since`
        (one queued earlier in the same transaction counts)."""
        ...

    async def addresses_sent(self, channel: str, external_ids: Sequence[str]) -> list[str]:
        """The addresses kefu sent the messages `external_ids` to."""
        ...

    # --- surveys ---------------------------------------------------------------------------------
    async def survey(self, survey_id: int) -> SurveyView | None: ...

    async def open_survey(self, conversation_id: int, at: datetime) -> SurveyView | None:
        """The conversation's latest survey still waiting for an answer at `at`."""
        ...

    async def agent_wrote_since(self, conversation_id: int, since: datetime) -> bool:
        """Whether anyone on staff wrote to the customer in the conversation after `since`."""
        ...

    async def customer_texts(self, conversation_id: int, channel: str) -> Sequence[str]:
        """The customer's latest few messages in the conversation on `channel`, newest first."""
        ...

    # --- customer health (the churn observer) ----------------------------------------------------
    async def health_batch(
        self,
        customer_ids: Sequence[int],
        signals_for: Sequence[int],
        now: datetime,
        window: timedelta,
        is_severe: IsSevere,
    ) -> dict[int, HealthRead]:
        """A batch's customers in one read: each one's stored health row, and the signals of
        those of `signals_for`, of those without a row and of those whose row says opted out."""
        ...

    async def signals(
        self,
        lo: int,
        hi: int,
        now: datetime,
        window: timedelta,
        is_severe: IsSevere,
        *,
        from_log: bool,
        owners: bool = True,
    ) -> dict[int, Signals]:
        """Signals of the customers with ids lo..hi that have any rows."""
        ...
