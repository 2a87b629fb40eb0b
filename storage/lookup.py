"""bot.lookup.Lookup on a session: the reads handlers in the ingest path make, as plain data.

The pipeline wraps its transaction's session in a `SessionLookup` and hands handlers that, never
the session: they can read but not write. A job that calls the same handler code (the SLA check,
the churn recompute, a Telegram survey button) wraps its own session the same way.

Reads asked for every message of a batch (the team's staff, open workloads) are cached for the
transaction in session.info, and run without autoflush (which would write the batch's pending
rows first, each time); the others see what the transaction has written so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import ConversationView, CustomerView
from bot.lookup import HealthRead, HealthView, IsSevere, Signals, StaffView, SurveyView
from storage import (
    acknowledgements,
    conversations,
    customers,
    ingest,
    insight,
    insight_segments,
    interactions,
    outbox,
    routing_cursors,
    staff,
    surveys,
)
from storage.models import Conversation, Customer, Staff, Survey


def customer_view(c: Customer) -> CustomerView:
    return CustomerView(
        c.id,
        c.display_name,
        c.language,
        c.timezone,
        tuple(c.tags or ()),
        bool(c.vip),
        bool(c.marketing_consent),
        c.birthday_md,
        c.forgotten_at,
        c.merged_into,
        c.created_at,
    )


def conversation_view(c: Conversation) -> ConversationView:
    return ConversationView(
        c.id,
        c.customer_id,
        c.status,
        c.team,
        c.assignee,
        c.priority,
        bool(c.is_complaint),
        c.severity,
        c.staff_thread,
        c.reply_channel,
        c.reply_address,
        c.first_response_at,
        c.first_response_due_at,
        c.resolution_due_at,
    )


def staff_view(s: Staff) -> StaffView:
    return StaffView(s.id, s.name, s.role, bool(s.active), bool(s.on_duty), s.telegram_user_id)


def survey_view(s: Survey) -> SurveyView:
    return SurveyView(
        s.id, s.conversation_id, s.customer_id, s.asked_at, s.expires_at, s.answered_at
    )


class SessionLookup:
    """The reads of one transaction. The session stays private: handlers get this object typed
    as bot.lookup.Lookup, which has no way to write."""

    __slots__ = ("_session",)

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def memo(self, name: str) -> dict[Any, Any]:
        # session.info lives as long as the session, and kefu opens one session per transaction.
        return self._session.info.setdefault(f"kefu.lookup.{name}", {})  # type: ignore[no-any-return]

    # --- staff ---------------------------------------------------------------------------------

    async def staff_member(self, staff_id: int) -> StaffView | None:
        member = await staff.by_id(self._session, staff_id)
        return None if member is None else staff_view(member)

    async def team_members(self, names: Sequence[str], *, on_duty: bool) -> Sequence[StaffView]:
        cache = self.memo("team_members")
        key = (tuple(names), on_duty)
        if key not in cache:
            roster = ingest.active_staff(self._session)  # the batch's dedupe read brought it
            if roster is not None:
                cache[key] = tuple(
                    s
                    for s in roster
                    if (s.on_duty or not on_duty) and (not names or s.name in names)
                )
            else:
                with self._session.no_autoflush:
                    found = await staff.active(self._session, on_duty=on_duty, names=names)
                cache[key] = tuple(staff_view(s) for s in found)
        members: Sequence[StaffView] = cache[key]
        return members

    async def leads(self, *, named: Sequence[str], among: Sequence[str]) -> Sequence[StaffView]:
        found = await staff.leads(self._session, named=named, among=among)
        return [staff_view(s) for s in found]

    # --- routing -------------------------------------------------------------------------------

    async def last_assigned(self, team: str) -> int | None:
        return await routing_cursors.last_of(self._session, team)

    async def open_counts(self, staff_ids: Sequence[int]) -> Mapping[int, int]:
        with self._session.no_autoflush:
            return await conversations.open_counts(self._session, staff_ids)

    # --- customers and conversations -------------------------------------------------------------

    async def conversation(self, conversation_id: int) -> ConversationView | None:
        found = await conversations.by_id(self._session, conversation_id)
        return None if found is None else conversation_view(found)

    async def latest_reopenable(self, customer_id: int) -> int | None:
        return await conversations.latest_reopenable(self._session, customer_id)

    async def holders(self, channel: str, addresses: Sequence[str]) -> list[tuple[str, int]]:
        return await customers.holders(self._session, channel, addresses)

    async def channels_of(self, customer_id: int) -> set[str]:
        return await insight_segments.channels_of(self._session, customer_id)

    async def health(self, customer_id: int) -> HealthView | None:
        row = await insight_segments.health_of(self._session, customer_id)
        return None if row is None else HealthView(row.band, row.last_contact_at)

    # --- messages --------------------------------------------------------------------------------

    async def acked_since(
        self, conversation_id: int, channel: str, address: str, since: datetime
    ) -> bool:
        return await acknowledgements.acked_since(
            self._session, conversation_id, channel, address, since
        )

    async def addresses_sent(self, channel: str, external_ids: Sequence[str]) -> list[str]:
        return await outbox.addresses_sent(self._session, channel, external_ids)

    # --- surveys ---------------------------------------------------------------------------------

    async def survey(self, survey_id: int) -> SurveyView | None:
        found = await surveys.by_id(self._session, survey_id)
        return None if found is None else survey_view(found)

    async def open_survey(self, conversation_id: int, at: datetime) -> SurveyView | None:
        found = await surveys.open_for(self._session, conversation_id, at)
        return None if found is None else survey_view(found)

    async def agent_wrote_since(self, conversation_id: int, since: datetime) -> bool:
        return await interactions.agent_wrote_since(self._session, conversation_id, since)

    async def customer_texts(self, conversation_id: int, channel: str) -> list[str]:
        return await interactions.customer_texts(self._session, conversation_id, channel)

    # --- customer health (the churn observer) ----------------------------------------------------

    async def health_batch(
        self,
        customer_ids: Sequence[int],
        signals_for: Sequence[int],
        now: datetime,
        window: timedelta,
        is_severe: IsSevere,
    ) -> dict[int, HealthRead]:
        return await insight.batch(self._session, customer_ids, signals_for, now, window, is_severe)

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
        return await insight.gather(
            self._session, lo, hi, now, window, is_severe, from_log=from_log, owners=owners
        )
