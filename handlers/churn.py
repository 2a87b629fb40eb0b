"""Churn warning: keeps customer_health up to date and tells the team's leads once per crossing.

Two ways in, one rule:
- the pipeline observer (`Churn.observe_batch`) rescores the customers who just wrote, inside the
  transaction that logs their messages: their message rates are decayed and bumped in O(1) from
  the stored row, the rest come from indexed queries on those customers' rows, all in one read
  per batch (none for a batch of first contacts asking plain questions);
- `Churn.recompute` rescores every live customer a chunk at a time (the scheduler's job, and
  `kefu customers rescore`): this is what sees time pass (silence), staff resolving complaints,
  SLA breaches and survey answers.

A customer whose score reaches [insight] threshold while not already warned about gets one
warning: an event in their log, an audit entry, and a post to the leads (the staff group, in the
conversation's topic; without one, each lead's private Telegram chat), all in the transaction that
stores the score, with a dedupe key per crossing. The warning re-arms only once the score has
fallen below rearm_below, so a customer hovering around the threshold is not announced on every
message.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config
from bot.effects import Audited, Effect, Event, HealthScores, Post
from bot.intents import Outbound, StaffNotice, StaffRoom
from bot.lookup import Lookup
from bot.messages import SPOKEN
from handlers import health, staff_alerts, staff_feed
from handlers.health import FAST_DAYS, SLOW_DAYS, Health, Signals
from handlers.routing import Router
from storage import audit, outbox
from storage import customers as customer_rows
from storage import insight as store
from storage.db import Database
from storage.insight import drop_gone
from storage.lookup import SessionLookup
from storage.models import Customer, utcnow

if TYPE_CHECKING:
    from bot.effects import CustomerView, Logged

log = logging.getLogger("kefu.churn")

CHUNK = 10000
Progress = Callable[[int], None]
OptOut = Callable[[str], bool]


@dataclass
class Outcome:
    scored: int = 0
    changed: int = 0
    warned: int = 0
    at_risk: int = 0


class Churn:
    def __init__(
        self,
        config: Config,
        router: Router,
        *,
        staff_room: StaffRoom | None = None,
        lead_chats: bool = False,
        is_opt_out: OptOut | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.insight
        self.router = router
        self.staff_room = staff_room
        # Without a staff group, warnings go to the leads' private chats (the staff channel on).
        self.lead_chats = lead_chats
        self.is_opt_out = is_opt_out
        self._announce = True  # see recompute: not on the first scoring of an install

    # --- the pipeline's observer ---------------------------------------------------------------

    async def __call__(self, reads: Lookup, note: Logged) -> list[Effect] | None:
        return await self.observe_batch(reads, [note])

    async def observe_batch(self, reads: Lookup, notes: Sequence[Logged]) -> list[Effect] | None:
        """A pipeline batch's messages, in order, with at most one read: the stored rows of the
        batch's customers and, for those whose score may change by more than when they write (a
        complaint, a complaint conversation, an opt-out, no stored row yet), their signals, in
        one statement; none when every customer is a first contact asking plain questions (the
        batch holds all there is of them). It hands back every new row (one HealthScores, stored
        by the pipeline in one executemany) and a warning's log line for each crossing."""
        if not self.cfg.enabled:
            return None
        live = [
            n for n in notes if n.customer.forgotten_at is None and n.customer.merged_into is None
        ]
        if not live:
            return None
        ids = list(dict.fromkeys(n.customer.id for n in live))
        full = set(dict.fromkeys(n.customer.id for n in live if not self._is_plain(n)))
        # First contacts with plain questions only: no stored row and nothing against them.
        first = {n.customer.id for n in live if n.new_customer} - full
        wanted = [cid for cid in ids if cid not in first]
        read = (
            await health.batch(
                reads,
                wanted,
                [cid for cid in wanted if cid in full],
                min(n.inbound.received_at for n in live if n.customer.id not in first),
                self.cfg,
            )
            if wanted
            else {}
        )
        known = {cid: (r.reasons, r.stored) for cid, r in read.items() if r.stored is not None}
        signals = {cid: r.signals for cid, r in read.items() if r.signals is not None}
        signals.update((cid, Signals()) for cid in first)
        pending: dict[int, dict[str, Any]] = {}
        effects: list[Effect] = []
        for note in live:
            cid = note.customer.id
            found = known.get(cid)
            if (
                found is not None
                and self._is_plain(note)
                and not (found[1].opted_out and note.customer.marketing_consent)
            ):
                values = await self._plain(reads, note, found, effects)
            else:
                # This batch's own rows are not stored yet: the latest row is the one in `known`.
                values = await self._full(
                    reads,
                    note,
                    replace(signals[cid], high_severity_cues=list(signals[cid].high_severity_cues)),
                    None if found is None else found[1],
                    effects,
                )
            pending[cid] = {"customer_id": cid, **values}
            known[cid] = (
                list(values["reasons"]),
                health.Stored(
                    values["rate_fast"],
                    values["rate_slow"],
                    values["rate_at"],
                    values["last_contact_at"],
                    values["opted_out"],
                    values["alerted_at"],
                    values["crossings"],
                ),
            )
        effects.append(HealthScores(tuple(pending.values())))
        return effects

    def _is_plain(self, note: Logged) -> bool:
        """No complaint, not in a complaint conversation, not an opt-out: only when the customer
        writes changes."""
        return (
            note.inbound.kind in SPOKEN
            and note.interaction_id is not None
            and not note.verdict.is_complaint
            and not (note.conversation is not None and note.conversation.is_complaint)
            and not (self.is_opt_out is not None and self.is_opt_out(note.inbound.text))
        )

    async def _full(
        self,
        reads: Lookup,
        note: Logged,
        signals: Signals,
        row: health.Stored | None,
        effects: list[Effect],
    ) -> dict[str, Any]:
        """From the customer's signals (read for the batch, or none for a first contact) and
        their latest row (stored, or this batch's previous message's)."""
        customer = note.customer
        now = note.inbound.received_at
        spoken = note.inbound.kind in SPOKEN and note.interaction_id is not None
        if row is not None:
            signals.rate_fast = health.decay(row.rate_fast, row.rate_at, now, FAST_DAYS)
            signals.rate_slow = health.decay(row.rate_slow, row.rate_at, now, SLOW_DAYS)
            signals.last_contact_at = row.last_contact_at
            signals.opted_out = row.opted_out
        if spoken:
            signals.rate_fast += 1.0
            signals.rate_slow += 1.0
            if signals.last_contact_at is None or now > signals.last_contact_at:
                signals.last_contact_at = now
            if self.is_opt_out is not None and self.is_opt_out(note.inbound.text):
                signals.opted_out = True
        signals.rate_at = now
        if signals.opted_out and customer.marketing_consent:
            signals.opted_out = False
        result = health.score(signals, self.cfg, now)
        alerted_at = row.alerted_at if row is not None else None
        values = self._values(
            result, signals, now, alerted_at, row.crossings if row is not None else 0
        )
        if values["alerted_at"] is not None and alerted_at is None:
            effects.extend(
                await self._warn_full(reads, customer, result, signals, now, values["crossings"])
            )
        return values

    async def _plain(
        self,
        reads: Lookup,
        note: Logged,
        found: tuple[list[dict[str, Any]], health.Stored],
        effects: list[Effect],
    ) -> dict[str, Any]:
        """The common case, from the stored row alone: a plain message changes only the reasons
        about when the customer writes."""
        now = note.inbound.received_at
        reasons, row = found
        fast = health.decay(row.rate_fast, row.rate_at, now, FAST_DAYS) + 1.0
        slow = health.decay(row.rate_slow, row.rate_at, now, SLOW_DAYS) + 1.0
        result = health.after_message(reasons, fast, slow, now, self.cfg)
        signals = Signals(
            rate_fast=fast,
            rate_slow=slow,
            rate_at=now,
            last_contact_at=now,
            opted_out=row.opted_out,
        )
        values = self._values(result, signals, now, row.alerted_at, row.crossings)
        if values["alerted_at"] is not None and row.alerted_at is None:
            effects.extend(
                await self._warn_full(
                    reads, note.customer, result, signals, now, values["crossings"]
                )
            )
        return values

    async def _warn_full(
        self,
        reads: Lookup,
        customer: Customer | CustomerView,
        result: Health,
        signals: Signals,
        now: datetime,
        crossing: int,
    ) -> list[Effect]:
        # The conversation to open and its owner, read only for the (rare) warning.
        full = (
            await health.gather(reads, customer.id, customer.id, now, self.cfg, from_log=False)
        ).get(customer.id)
        if full is not None:
            signals.conversation_id, signals.owner = full.conversation_id, full.owner
        event, audited, posts = await self.warn(reads, customer, result, signals, now, crossing)
        return [event, audited, *posts]

    # --- everyone ------------------------------------------------------------------------------

    async def recompute(
        self,
        db: Database,
        now: datetime | None = None,
        *,
        from_log: bool = False,
        on_progress: Progress | None = None,
    ) -> Outcome:
        """Rescores every live customer, CHUNK per transaction; forgotten and merged customers'
        rows are removed. The last contact, message rates and opt-out come from each customer's
        stored row (the observer keeps them as messages arrive), and from the log for customers
        without one; from_log: from the log for everyone (a rebuild, `kefu customers rescore
        --from-log`), which reads every log row."""
        now = now or utcnow()
        total = Outcome()
        async with db.transaction() as session:
            await drop_gone(session)
            # The first scoring of an install with history finds its at-risk customers all at
            # once: they are marked (and listed by `kefu customers at-risk`), not announced one
            # post each; warnings start with the next crossing.
            self._announce = await store.any_scored(session)
        after = 0
        while True:
            # A chunk allocates some hundred thousand short-lived objects and no reference
            # cycles: the cyclic collector, run every few hundred allocations, was a third of the
            # recompute's time. It is paused for one chunk at a time, so garbage of other tasks
            # waits at most that long.
            paused = gc.isenabled()
            gc.disable()
            try:
                async with db.transaction() as session:
                    customers = await store.chunk(session, after, CHUNK)
                    if not customers:
                        break
                    after = customers[-1].customer_id
                    outcome = await self._chunk(session, customers, now, from_log)
            finally:
                if paused:
                    gc.enable()
            total.scored += outcome.scored
            total.changed += outcome.changed
            total.warned += outcome.warned
            total.at_risk += outcome.at_risk
            if on_progress is not None:
                on_progress(total.scored)
        if not self._announce and total.at_risk:
            log.warning(
                "insight.first_scoring at_risk=%d: marked, not announced; "
                "see kefu customers at-risk",
                total.at_risk,
            )
        log.info(
            "insight.recompute scored=%d changed=%d at_risk=%d warned=%d",
            total.scored,
            total.changed,
            total.at_risk,
            total.warned,
        )
        return total

    async def _chunk(
        self,
        session: AsyncSession,
        customers: Sequence[store.ChunkRow],
        now: datetime,
        from_log: bool,
    ) -> Outcome:
        outcome = Outcome()
        lo, hi = customers[0].customer_id, customers[-1].customer_id
        # Contact times, rates and the opt-out come from the stored rows (the observer keeps them
        # as messages arrive); from the log for a rebuild, or when a customer has none yet.
        read_log = from_log or any(c.rate_at is None for c in customers)
        reads = SessionLookup(session)
        signals = await health.gather(reads, lo, hi, now, self.cfg, from_log=read_log)
        rows: list[dict[str, Any]] = []
        warnings: list[tuple[int, Health, Signals, int]] = []
        threshold, rearm = self.cfg.threshold, self.cfg.rearm_below
        for c in customers:
            cid = c.customer_id
            s = signals.get(cid)
            if not (from_log or c.rate_at is None):
                if s is None:
                    s = Signals()
                s.last_contact_at, s.opted_out = c.last_contact_at, c.opted_out
                s.rate_fast, s.rate_slow, s.rate_at = c.rate_fast, c.rate_slow, c.rate_at
            elif s is None:
                s = Signals(rate_at=now)
            else:
                s.rate_at = now  # rates as of now (none: zero), read from the log
            if c.consent and s.opted_out:
                s.opted_out = False
            result = health.score(s, self.cfg, now)
            alerted_at, crossings = c.alerted_at, c.crossings
            if result.score >= threshold and alerted_at is None:
                alerted_at, crossings = now, crossings + 1
                warnings.append((cid, result, s, crossings))
            elif result.score < rearm and alerted_at is not None:
                alerted_at = None
            outcome.scored += 1
            if result.band == "at_risk":
                outcome.at_risk += 1
            reasons_json = json.dumps(result.reasons) if result.reasons else "[]"
            if (
                c.stored
                and c.rate_at is not None
                and c.score == result.score
                and c.reasons_json == reasons_json
                and alerted_at == c.alerted_at
                and c.last_contact_at == s.last_contact_at
                and c.opted_out == s.opted_out
            ):
                # Rates drift with time but only matter through the score: stale rates are fine,
                # as every full recompute rebuilds them from the log.
                continue
            rows.append(
                {
                    "customer_id": cid,
                    "reasons_json": reasons_json,
                    **_row(result, s, now, alerted_at, crossings),
                }
            )
        if rows:
            await store.write(session, rows)
            outcome.changed = len(rows)
        for cid, result, s, crossings in warnings if self._announce else ():
            customer = await customer_rows.by_id(session, cid)
            assert customer is not None
            event, audited, posts = await self.warn(reads, customer, result, s, now, crossings)
            store.add_event(session, event)
            audit.record(session, audited.actor, audited.action, audited.subject, **audited.detail)
            # A job, not an observer: its posts are queued here, in its transaction.
            for post in posts:
                if post.feed is not None:
                    await staff_feed.queue(
                        session, post.out, addition=post.feed.text, limit=post.feed.limit
                    )
                else:
                    await outbox.enqueue(session, post.out)
            outcome.warned += 1
        return outcome

    def _values(
        self, result: Health, s: Signals, now: datetime, alerted_at: datetime | None, crossings: int
    ) -> dict[str, Any]:
        if result.score >= self.cfg.threshold and alerted_at is None:
            alerted_at, crossings = now, crossings + 1
        elif result.score < self.cfg.rearm_below and alerted_at is not None:
            alerted_at = None
        return _row(result, s, now, alerted_at, crossings)

    # --- the warning ---------------------------------------------------------------------------

    async def warn(
        self,
        reads: Lookup,
        customer: Customer | CustomerView,
        result: Health,
        s: Signals,
        now: datetime,
        crossing: int,
    ) -> tuple[Event, Audited, list[Post]]:
        """The warning's line in the customer's log, its audit entry and the posts that tell
        the leads (in the staff group, the conversation's topic; else each lead's private
        chat), for the caller to store and queue."""
        conversation = await reads.conversation(s.conversation_id) if s.conversation_id else None
        team = self.router.team(conversation.team if conversation is not None else None)
        leads = await self.router.leads(reads, team)
        owner = await staff_alerts.staff_name(reads, s.owner)
        text = warning_text(
            self.cfg.language,
            customer,
            result,
            conversation.id if conversation else None,
            owner,
            [m.name for m in leads],
        )
        event = Event(
            customer.id,
            (conversation.reply_channel if conversation is not None else None) or "system",
            text,
            {
                "kind": "churn_warning",
                "score": result.score,
                "reasons": result.reasons,
                "crossing": crossing,
                "leads": [m.name for m in leads],
            },
            now,
            conversation_id=conversation.id if conversation is not None else None,
        )
        audited = Audited(
            "kefu",
            "insight.churn_warning",
            f"customer:{customer.id}",
            {
                "score": result.score,
                "reasons": [r["code"] for r in result.reasons],
                "crossing": crossing,
                "conversation": conversation.id if conversation is not None else None,
            },
        )
        key = f"churn:{customer.id}:{crossing}"
        posts: list[Post] = []
        group = staff_alerts.group_of(self.staff_room)
        if group is not None and conversation is not None:
            name = staff_alerts.name_of(customer)
            posts.append(staff_alerts.alert(group, conversation, name, text, key, about="churn"))
        elif self.lead_chats and self.staff_room is not None:
            for lead in leads:
                if lead.telegram_user_id is None:
                    continue
                notice = StaffNotice(
                    text=text,
                    conversation_id=conversation.id if conversation is not None else None,
                    customer_id=customer.id,
                    about="churn",
                    agent=lead.name,
                )
                posts.append(
                    Post(
                        Outbound(
                            self.staff_room.channel,
                            str(lead.telegram_user_id),
                            notice,
                            f"{key}:{lead.id}",
                        )
                    )
                )
        log.warning(
            "insight.churn_warning customer=%s score=%d reasons=%s conversation=%s leads=%s",
            customer.id,
            result.score,
            ",".join(r["code"] for r in result.reasons),
            conversation.id if conversation is not None else None,
            ",".join(m.name for m in leads),
        )
        return event, audited, posts


def warning_text(
    language: str,
    customer: Customer | CustomerView,
    result: Health,
    conversation_id: int | None,
    owner: str | None,
    leads: Sequence[str],
) -> str:
    name = staff_alerts.name_of(customer)
    reasons = [f"• {line}" for line in health.explain_all(result.reasons, language, 3)]
    mentions = ", ".join("@" + n for n in leads)
    if language == "zh":
        lines = [
            f"📉 流失预警：{name}（客户 #{customer.id}）风险分 {result.score}/100",
            "原因：",
            *reasons,
        ]
        lines.append(f"打开会话 #{conversation_id}" if conversation_id else "暂无会话")
        lines.append(
            f"负责人：{'@' + owner if owner else '无'}"
            + (f" · 主管：{mentions}" if mentions else "")
        )
    else:
        lines = [
            f"📉 Churn warning: {name} (customer #{customer.id}) · risk {result.score}/100",
            "why:",
            *reasons,
        ]
        lines.append(
            f"open conversation #{conversation_id}" if conversation_id else "no conversation yet"
        )
        lines.append(
            f"owner: {'@' + owner if owner else 'nobody'}"
            + (f" · leads: {mentions}" if mentions else "")
        )
    return "\n".join(lines)


def _row(
    result: Health, s: Signals, now: datetime, alerted_at: datetime | None, crossings: int
) -> dict[str, Any]:
    """A customer's stored score, as the incremental update and the recompute both write it."""
    return {
        "score": result.score,
        "band": result.band,
        "reasons": result.reasons,
        "last_contact_at": s.last_contact_at,
        "rate_fast": s.rate_fast,
        "rate_slow": s.rate_slow,
        "rate_at": s.rate_at,
        "opted_out": s.opted_out,
        "alerted_at": alerted_at,
        "crossings": crossings,
        "updated_at": now,
    }
