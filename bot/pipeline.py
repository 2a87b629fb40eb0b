"""receive(inbound): dedupe, identify, thread, log, classify, route, observe — in one transaction.

The pipeline names no particular handler: the classifier, the router, the survey-answer check and
the SLA clock are plugged in (bot/plugins.py), and observers return effects (bot/effects.py) that
it applies here, in the same transaction.

Concurrent receive() calls are coalesced into one transaction per batch (group commit): a batch
costs a handful of statements whatever its size, and every caller still gets its answer only after
the commit that holds its message. If a batch fails because of one message's data (a constraint,
a value the database refuses, a handler's error on its text), each message is retried on its own,
so one bad message never takes others down with it. If it fails because of the database itself
(locked, down, out of connections), the whole batch fails at once with Unavailable: retrying
message by message would only make everyone wait the busy timeout again, and the channels retry.
The queue in front of the writer is bounded: when it is full, receive() waits a little, then
raises Unavailable too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar, assert_never

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import PRIORITY_RANK
from bot.effects import (
    NOT_A_COMPLAINT,
    Acknowledged,
    Audited,
    ComplaintReasons,
    ConversationView,
    CustomerView,
    Decision,
    Effect,
    Event,
    HealthScores,
    Logged,
    Observer,
    Post,
    RaiseSeverity,
    Say,
    SlaDue,
    SurveyAnswered,
    Unreachable,
    Verdict,
    WithdrawConsent,
)
from bot.lookup import Lookup
from bot.messages import SPOKEN, THREAD, TITLE, Inbound, Receipt
from bot.text import redact_key
from storage import (
    audit,
    campaigns,
    conversations,
    customers,
    ingest,
    insight,
    interactions,
    processed_messages,
    routing_cursors,
    surveys,
)
from storage import outbox as outbox_rows
from storage.db import Database
from storage.lookup import SessionLookup, conversation_view, customer_view
from storage.models import Acknowledgement, Conversation, Customer, Interaction, utcnow
from storage.outage import brief

log = logging.getLogger("kefu.pipeline")

Classifier = Callable[[str, str | None], Verdict]
# route(lookup, verdict, customer, conversation, inbound) -> Decision: plain data in, a decision
# out; the lookup (bot/lookup.py) reads staff on duty and open workloads (and the assignment
# cursor).
Router = Callable[
    [Lookup, Verdict, CustomerView, ConversationView | None, Inbound], Awaitable[Decision]
]


# explicit(source) -> the verdict of a message its channel marked a complaint.
Explicit = Callable[[str], Verdict]
# answer(lookup, conversation_id, inbound) -> the message as a survey answer (an event), or None:
# asked before a customer's message reopens a resolved conversation.
Answer = Callable[[Lookup, int, Inbound], Awaitable[Inbound | None]]
# resume(team, due, at) -> due: a pending conversation's SLA clock restarts as its customer
# answers (plain values in and out: the pipeline stores what comes back).
Resume = Callable[[str | None, SlaDue, datetime], SlaDue]


# Seconds a sender is asked to wait: a full queue drains in well under a second; a locked or
# down database needs longer.
BUSY_RETRY_SECONDS = 2
DOWN_RETRY_SECONDS = 10
# Each retry after a lost race re-reads what the other process committed, so it can lose only on
# a key it has not met yet: the customer's identity, their open conversation, the message itself.
# Two attempts were too few when another process wrote the same message and the same new customer
# at once: the second loss answered a valid message 422 (seen in test_multiprocess_postgres).
RACE_ATTEMPTS = 4


class Unavailable(Exception):
    """Nothing is wrong with the message: kefu cannot store anything right now. Send it again
    after `retry_after` seconds. `reason`: "busy" (the writer's queue is full) or "unavailable"
    (the database is locked or down)."""

    def __init__(self, reason: str, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Rejected(Exception):
    """The database refused this one message's data (a value out of range, a constraint):
    sending it again unchanged cannot help."""


@dataclass
class _Pending:
    inbound: Inbound
    future: asyncio.Future[Receipt] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Pipeline:
    def __init__(
        self,
        db: Database,
        *,
        classify: Classifier,
        route: Router,
        explicit: Explicit,
        answer: Answer | None = None,
        resume: Resume | None = None,
        observers: Sequence[Observer] = (),
        on_commit: Callable[[], None] | None = None,
        max_batch: int = 256,
        max_queue: int = 1000,
        queue_wait_seconds: float = 2.0,
    ) -> None:
        self.db = db
        self.classify = classify
        self.route = route
        self.explicit = explicit
        self.answer = answer
        self.resume = resume
        self.observers = list(observers)
        self.on_commit = on_commit
        self.max_batch = max_batch
        self.queue_wait_seconds = queue_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._writer: asyncio.Task[None] | None = None
        self.erasure_key = b""

    async def receive(self, inbound: Inbound) -> Receipt:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="kefu-pipeline-writer")
        pending = _Pending(inbound)
        if not self._queue.full():
            self._queue.put_nowait(pending)
        else:
            try:
                await asyncio.wait_for(self._queue.put(pending), self.queue_wait_seconds)
            except TimeoutError:
                log.warning("pipeline.queue.full size=%d", self._queue.qsize())
                raise Unavailable(
                    "busy",
                    "kefu is busy: too many messages are waiting to be stored",
                    retry_after=BUSY_RETRY_SECONDS,
                ) from None
        return await pending.future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.future.done()]  # callers may have gone away
            if live:
                await self._commit_batch(live)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            receipts = await self.receive_many([p.inbound for p in batch])
        except Exception as exc:  # noqa: BLE001 - isolate the bad message below
            if _systemic(exc):
                log.warning(
                    "pipeline.batch.unavailable size=%d error=%s", len(batch), brief(exc)
                )
                for pending in batch:
                    if not pending.future.done():
                        failure = Unavailable(
                            "unavailable",
                            "the database is unavailable; the message was not stored",
                            retry_after=DOWN_RETRY_SECONDS,
                        )
                        failure.__cause__ = exc
                        pending.future.set_exception(failure)
                return
            if len(batch) > 1:
                log.info("pipeline.batch.retry_singly size=%d error=%s", len(batch), brief(exc))
                for pending in batch:
                    await self._commit_batch([pending])
                return
            pending = batch[0]
            log.error(
                "pipeline.receive.failure channel=%s external_id=%s error=%s",
                pending.inbound.channel,
                redact_key(pending.inbound.external_id),  # a chat id or Message-ID names people
                brief(exc),
            )
            if _one_message(exc):
                refused = Rejected("the database refused a value of this message")
                refused.__cause__ = exc
                exc = refused
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        for pending, receipt in zip(batch, receipts, strict=True):
            if not pending.future.done():
                pending.future.set_result(receipt)

    async def receive_many(self, inbounds: Sequence[Inbound]) -> list[Receipt]:
        """One transaction for all; retried on a unique-key race with another process."""
        if not self.erasure_key:
            async with self.db.transaction() as session:  # committed before any batch relies on it
                self.erasure_key = await customers.erasure_key(session)
        for attempt in range(1, RACE_ATTEMPTS + 1):
            try:
                async with self.db.transaction() as session:
                    receipts = await _receive(session, inbounds, self)
                    queued = outbox_rows.queued(session)
                break
            except (IntegrityError, OperationalError) as exc:
                if attempt == RACE_ATTEMPTS or not _race(exc):
                    raise
        if queued and self.on_commit is not None:
            self.on_commit()
        return receipts


def _race(exc: DBAPIError) -> bool:
    """Lost a race with another transaction (a unique key both inserted, a deadlock, a
    serialization failure): trying once more succeeds. A lock held for the whole busy timeout
    is not a race: trying again only doubles the wait."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in ("40001", "40P01")


def _one_message(exc: BaseException) -> bool:
    """The database refused this data: a constraint or a value (asyncpg's value-too-long is a
    plain DBAPIError: its SQLSTATE class, 22 or 23, says so)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    orig = getattr(exc, "orig", None)
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    return code[:2] in ("22", "23")


def _systemic(exc: BaseException) -> bool:
    """The database, not the message: locked, down, out of connections, schema missing."""
    if _one_message(exc):
        return False
    return isinstance(exc, (DBAPIError, PoolTimeout, OSError))


async def _receive(
    session: AsyncSession, inbounds: Sequence[Inbound], pipeline: Pipeline
) -> list[Receipt]:
    receipts: list[Receipt | None] = [None] * len(inbounds)

    # 1. dedupe: against the log, and within the batch itself
    logged: dict[tuple[str, str], Receipt] = {}
    for channel, ids in ingest.by_channel((i.channel, i.external_id) for i in inbounds).items():
        # A forgotten customer's messages keep only a keyed token of their id: a channel that
        # delivers one again (an IMAP folder re-read) still finds it logged.
        erased = {customers.erased_id(pipeline.erasure_key, channel, i): i for i in ids}
        rows = await ingest.logged(session, channel, [*ids, *erased])
        for external_id, interaction_id, customer_id, conversation_id in rows:
            if external_id is None:  # never: matched by external_id IN (...); for the type checker
                continue
            logged[(channel, erased.get(external_id, external_id))] = Receipt(
                "duplicate", interaction_id, customer_id, conversation_id
            )
    first_of: dict[tuple[str, str], int] = {}
    fresh: list[int] = []
    for n, inbound in enumerate(inbounds):
        key = (inbound.channel, inbound.external_id)
        if key in logged:
            receipts[n] = logged[key]
        elif key in first_of:
            continue  # answered after the first copy is written
        else:
            first_of[key] = n
            fresh.append(n)

    if fresh:
        await _log_fresh(session, [inbounds[n] for n in fresh], fresh, receipts, pipeline)

    for n, inbound in enumerate(inbounds):
        if receipts[n] is None:
            first = receipts[first_of[(inbound.channel, inbound.external_id)]]
            assert first is not None
            receipts[n] = Receipt(
                "duplicate", first.interaction_id, first.customer_id, first.conversation_id
            )
    return [r for r in receipts if r is not None]


async def _closed_answer(
    session: AsyncSession,
    reads: SessionLookup,
    pipeline: Pipeline,
    named: Conversation | None,
    customer_id: int,
    inbound: Inbound,
) -> tuple[Conversation, Inbound] | None:
    """The message as the answer to a survey whose conversation is closed (a lead resolved and
    closed it, or it was auto-closed before the survey expired): the closed conversation it
    replies to, else the one of the customer's open survey. None: a message like any other."""
    if pipeline.answer is None:
        return None
    if named is not None:
        conversation: Conversation | None = named
    else:
        found = await surveys.open_conversation_of(session, customer_id, inbound.received_at)
        conversation = None if found is None else await session.get(Conversation, found)
    if conversation is None or conversation.status != "closed":
        return None
    answer = await pipeline.answer(reads, conversation.id, inbound)
    return None if answer is None else (conversation, answer)


async def _log_fresh(
    session: AsyncSession,
    inbounds: list[Inbound],
    positions: list[int],
    receipts: list[Receipt | None],
    pipeline: Pipeline,
) -> None:
    # Handlers read through this; they never get the session, so they cannot write.
    reads = SessionLookup(session)
    # 2. identify: Identity(channel, address) -> Customer, created on first contact
    owner, customers, senders = await ingest.identify(session, inbounds)

    # 3. thread: a conversation the message points at, else the customer's latest live one
    latest = await ingest.live_conversations(session, senders)
    threads: list[Conversation | None] = []
    # The rows this batch creates (by object identity): first contacts and new conversations.
    created: set[int] = {id(c) for cid, c in customers.items() if cid not in senders.known}
    new_conversations: list[Conversation] = []
    for n, inbound in enumerate(inbounds):
        customer = customers[owner[(inbound.channel, inbound.address)]]
        if customer.display_name is None and inbound.display_name:
            customer.display_name = inbound.display_name
        if customer.language is None and inbound.language:
            customer.language = inbound.language
        named = await ingest.named_conversation(session, inbound, customer.id)
        conversation = named
        if conversation is None or conversation.status == "closed":
            # Closed is final: a reply to a closed thread joins the customer's live conversation,
            # and only without one starts a new conversation.
            conversation = latest.get(customer.id)
            if (
                inbound.kind in SPOKEN
                and (named is not None or conversation is None)
                and id(customer) not in created
                and (late := await _closed_answer(session, reads, pipeline, named, customer.id,
                                                  inbound)) is not None
            ):
                # "5" for the survey of a conversation closed since it was asked: its answer, an
                # event in that conversation; no new conversation reaches staff as "5".
                conversation, inbounds[n] = late
                threads.append(conversation)
                continue
        if conversation is None and inbound.kind in SPOKEN:
            conversation = Conversation(customer_id=customer.id, created_at=inbound.received_at)
            new_conversations.append(conversation)
            latest[customer.id] = conversation
            created.add(id(conversation))
        elif (
            conversation is not None
            and inbound.kind in SPOKEN
            and conversation.status in ("resolved", "open")
            and id(conversation) not in created
            and pipeline.answer is not None
            and (answer := await pipeline.answer(reads, conversation.id, inbound)) is not None
        ):
            # "5" after a survey is its answer, an event: it neither reopens the conversation nor
            # reaches staff as a message (a customer who reopened it with "thanks!" may still rate).
            inbounds[n] = answer
        elif (
            conversation is not None
            and inbound.kind in SPOKEN
            and conversation.status == "resolved"
        ):
            conversation.status = "open"
            conversation.resolved_at = None
            session.add(
                _event(conversation, inbound, "reopened", "reopened by a new customer message")
            )
        elif (
            conversation is not None and inbound.kind in SPOKEN and conversation.status == "pending"
        ):
            conversation.status = "open"  # pending waits on the customer; they answered
            if conversation.sla_paused_at is not None and pipeline.resume is not None:
                due = conversations.sla_of(conversation)
                conversations.set_sla(
                    conversation, pipeline.resume(conversation.team, due, inbound.received_at)
                )
            session.add(
                _event(conversation, inbound, "status", "open again: the customer answered")
            )
        threads.append(conversation)
    await ingest.add_objects(session, Conversation, new_conversations)

    # 4-6. log, classify, route
    logged: list[dict[str, object]] = []
    notes: list[tuple[Customer, Conversation | None, Verdict, Decision]] = []
    cursors: dict[str, int] = {}
    for inbound, conversation in zip(inbounds, threads, strict=True):
        customer = customers[owner[(inbound.channel, inbound.address)]]
        spoken = inbound.kind in SPOKEN
        verdict = NOT_A_COMPLAINT
        if spoken:
            verdict = (
                pipeline.explicit(f"{inbound.channel} marked it a complaint")
                if inbound.kind == "complaint"
                else pipeline.classify(inbound.text, customer.language)
            )
        decision = (
            await pipeline.route(
                reads,
                verdict,
                customer_view(customer),
                None if conversation is None else conversation_view(conversation),
                inbound,
            )
            if spoken
            else NO_DECISION
        )
        meta = dict(inbound.meta)
        if inbound.thread:
            meta[THREAD] = list(inbound.thread)
        if inbound.title:
            meta[TITLE] = inbound.title
        if verdict.is_complaint:
            meta["complaint"] = {
                "severity": verdict.severity,
                "score": verdict.score,
                "reasons": list(verdict.reasons),
            }
        if not spoken:
            meta.setdefault("kind", inbound.kind)
        logged.append(
            {
                "conversation_id": conversation.id if conversation else None,
                "customer_id": customer.id,
                "channel": inbound.channel,
                "direction": "in" if spoken else "event",
                "author_kind": "customer",
                "author_id": inbound.address,
                "text": inbound.text,
                "attachments": [a.to_json() for a in inbound.attachments],
                "external_id": inbound.external_id,
                "meta": meta,
                "created_at": inbound.received_at,
            }
        )
        if conversation is not None and spoken:
            _touch(conversation, inbound, verdict, decision)
        if decision.round_robin is not None and decision.team is not None:
            cursors[decision.team] = decision.round_robin
        notes.append((customer, conversation, verdict, decision))
    # Round-robin cursors, once per team and batch: the router kept the batch's own moves.
    for team, staff_id in cursors.items():
        await routing_cursors.advance(session, team, staff_id, utcnow())
    # The log is the hot path: one statement (on PostgreSQL with the conversations touched
    # above), not the ORM's unit of work.
    ids = await ingest.log_lines(session, logged)
    await session.flush()  # what is left (SQLite: the conversations touched above)
    if not pipeline.observers:
        for n, interaction_id, (customer, conversation, _, _) in zip(
            positions, ids, notes, strict=True
        ):
            receipts[n] = Receipt(
                "accepted", interaction_id, customer.id, conversation.id if conversation else None
            )
        return
    # An observer with observe_batch sees the whole batch at once, after the per-message ones:
    # it can read and write for all its messages in a statement or two instead of per message.
    batched: list[Callable[[Lookup, Sequence[Logged]], Awaitable[Sequence[Effect] | None]]]
    batched = [
        b for o in pipeline.observers if (b := getattr(o, "observe_batch", None)) is not None
    ]
    each = [o for o in pipeline.observers if not hasattr(o, "observe_batch")]
    rows = _Rows(customers, {c.id: c for c in threads if c is not None})
    for n, inbound, interaction_id, (customer, conversation, verdict, decision) in zip(
        positions, inbounds, ids, notes, strict=True
    ):
        receipts[n] = Receipt(
            "accepted", interaction_id, customer.id, conversation.id if conversation else None
        )
        note = _note(inbound, interaction_id, customer, conversation, created, verdict, decision)
        for observer in each:
            effects = await observer(reads, note)
            if effects:
                await _apply(session, effects, rows)
                # The next observer sees what this one changed.
                note = _note(
                    inbound, interaction_id, customer, conversation, created, verdict, decision
                )
    if batched:
        # Taken after every per-message observer, as the batch left the rows.
        seen = [
            _note(inbound, interaction_id, customer, conversation, created, verdict, decision)
            for inbound, interaction_id, (customer, conversation, verdict, decision) in zip(
                inbounds, ids, notes, strict=True
            )
        ]
        for observe_batch in batched:
            effects = await observe_batch(reads, seen)
            if effects:
                await _apply(session, effects, rows)


NO_DECISION = Decision()


def _note(
    inbound: Inbound,
    interaction_id: int,
    customer: Customer,
    conversation: Conversation | None,
    created: set[int],
    verdict: Verdict,
    decision: Decision,
) -> Logged:
    return Logged(
        inbound,
        interaction_id,
        customer_view(customer),
        None if conversation is None else conversation_view(conversation),
        id(conversation) in created,
        verdict,
        decision,
        id(customer) in created,
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """The batch's own customer and conversation rows, changed in place by effects: the session
    writes them at the flush, and the next observer's snapshot shows the change."""

    customers: dict[int, Customer]
    conversations: dict[int, Conversation]


async def _apply(session: AsyncSession, effects: Sequence[Effect], rows: _Rows) -> None:
    """Every write an observer asked for, in its order, in the ingest transaction."""
    for effect in effects:
        if isinstance(effect, Event):
            session.add(interactions.event_row(effect))
        elif isinstance(effect, Say):
            await outbox_rows.say(
                session,
                effect.out,
                log_meta=effect.log_meta,
                at=effect.at,
                not_before=effect.not_before,
            )
        elif isinstance(effect, Post):
            await _post(session, effect)
        elif isinstance(effect, Acknowledged):
            session.add(
                Acknowledgement(
                    conversation_id=effect.conversation_id,
                    channel=effect.channel,
                    address=effect.address,
                    at=effect.at,
                )
            )
        elif isinstance(effect, WithdrawConsent):
            customer = await _row(session, rows.customers, Customer, effect.customer_id)
            if customer is not None:
                customer.marketing_consent = False
            cancelled = await campaigns.cancel_for(
                session, effect.customer_id, effect.reason, effect.at
            )
            event = effect.event
            session.add(
                interactions.event_row(replace(event, meta={**event.meta, "cancelled": cancelled}))
            )
        elif isinstance(effect, RaiseSeverity):
            conversation = await _row(
                session, rows.conversations, Conversation, effect.conversation_id
            )
            if conversation is not None:
                conversation.severity = effect.severity
        elif isinstance(effect, ComplaintReasons):
            await conversations.add_complaint_reasons(
                session, effect.conversation_id, effect.reasons, effect.at
            )
        elif isinstance(effect, Unreachable):
            await customers.mark_unreachable(
                session, effect.channel, effect.address, effect.reason
            )
        elif isinstance(effect, SurveyAnswered):
            await surveys.answer(
                session,
                effect.survey_id,
                score=effect.score,
                comment=effect.comment,
                channel=effect.channel,
                at=effect.at,
            )
        elif isinstance(effect, HealthScores):
            await insight.write(session, effect.rows)
        elif isinstance(effect, Audited):
            audit.record(session, effect.actor, effect.action, effect.subject, **effect.detail)
        else:
            assert_never(effect)


_R = TypeVar("_R", Customer, Conversation)


async def _row(
    session: AsyncSession, batch: dict[int, _R], kind: type[_R], row_id: int
) -> _R | None:
    """The batch's own row (changed in place, written at the flush), else the stored one."""
    return batch.get(row_id) or await session.get(kind, row_id)


async def _post(session: AsyncSession, post: Post) -> None:
    out = post.out
    if post.once is not None:
        channel, key, conversation_id = post.once
        if not await processed_messages.claim(session, channel, key, conversation_id):
            return
    if post.feed is not None:
        feed = post.feed
        if await outbox_rows.append_to_waiting(session, out, feed.text, feed.into, feed.limit):
            return
    await outbox_rows.enqueue(session, out, interaction_id=post.interaction_id)


def _event(conversation: Conversation, inbound: Inbound, kind: str, text: str) -> Interaction:
    return interactions.event_row(
        Event(
            conversation.customer_id,
            inbound.channel,
            text,
            {"kind": kind},
            inbound.received_at,
            conversation_id=conversation.id,
        )
    )


def _touch(
    conversation: Conversation, inbound: Inbound, verdict: Verdict, decision: Decision
) -> None:
    # Assigned only when changed: every ORM attribute write costs an event, even of the same value.
    changes: dict[str, object] = {
        "reply_channel": inbound.channel,
        "reply_address": inbound.address,
        "updated_at": max(conversation.updated_at or inbound.received_at, inbound.received_at),
    }
    if verdict.is_complaint:
        changes["is_complaint"] = True
    if PRIORITY_RANK.get(decision.priority, 1) > PRIORITY_RANK.get(conversation.priority, 1):
        changes["priority"] = decision.priority
    if decision.team is not None and (conversation.team is None or decision.reassign):
        changes["team"] = decision.team
    if decision.assignee_id is not None and (conversation.assignee is None or decision.reassign):
        changes["assignee"] = decision.assignee_id
    # Due times only ever tighten: a complaint after a question brings the answer forward.
    first_due = _earliest(conversation.first_response_due_at, decision.first_response_due)
    resolution_due = _earliest(conversation.resolution_due_at, decision.resolution_due)
    changes["first_response_due_at"] = first_due
    changes["resolution_due_at"] = resolution_due
    changes["sla_due_at"] = first_due if conversation.first_response_at is None else resolution_due
    for name, value in changes.items():
        if getattr(conversation, name) != value:
            setattr(conversation, name, value)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)

