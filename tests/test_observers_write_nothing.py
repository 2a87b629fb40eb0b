"""Observers and the router look, they do not write: every observer kefu registers returns its
writes as effects (bot/effects.py), and the router a Decision, for the pipeline to apply, so not
one INSERT, UPDATE or DELETE reaches the database while one of them runs, whatever the message
(a complaint at night, an opt-out, a plain question), and yet all their writes are there after
the commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func, select

from bot.effects import Effects, Logged, Observer, Phase
from bot.plugins import Observers
from bot.plugins import pipeline as plugged_pipeline
from handlers import email_events, survey
from handlers.acknowledge import Acknowledger
from handlers.churn import Churn
from handlers.consent import ConsentObserver
from handlers.routing import Router
from handlers.staff_alerts import ComplaintAlerts
from handlers.staff_group import mirror_observer
from handlers.templating import Templates
from storage import staff
from storage.db import Database
from storage.models import (
    Acknowledgement,
    Customer,
    CustomerHealth,
    Interaction,
    OutboxRow,
    RoutingCursor,
)
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, config, message
from tests.handlers.test_acknowledge import CFG, NIGHT

WRITES = ("INSERT", "UPDATE", "DELETE")


class Watch:
    """Statements the database saw while an observer was running."""

    def __init__(self) -> None:
        self.inside = False
        self.seen: list[str] = []

    def listen(self, db: Database) -> None:
        @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
        def record(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, _many: bool) -> None:
            if self.inside and statement.lstrip().upper().startswith(WRITES):
                self.seen.append(statement.split("(")[0][:80])

    def wrap(self, observer: Observer) -> Observer:
        async def observe(reads: Any, note: Logged) -> Effects | None:
            # What the pipeline itself has pending is not the observer's: written first (through
            # the lookup's private session, which no observer is handed).
            await reads._session.flush()
            self.inside = True
            try:
                return await observer(reads, note)
            finally:
                self.inside = False

        batch = getattr(observer, "observe_batch", None)
        if batch is None:
            return observe

        class Batched:
            async def __call__(self, reads: Any, note: Logged) -> Effects | None:
                return await observe(reads, note)

            async def observe_batch(
                inner, reads: Any, notes: Sequence[Logged]
            ) -> Effects | None:
                await reads._session.flush()
                self.inside = True
                try:
                    result: Effects | None = await batch(reads, notes)
                    return result
                finally:
                    self.inside = False

        return Batched()

    def wrap_router(self, router: Router) -> Any:
        async def route(reads: Any, *args: Any) -> Any:
            await reads._session.flush()
            self.inside = True
            try:
                return await router(reads, *args)
            finally:
                self.inside = False

        return route


async def test_no_observer_or_router_writes_while_it_runs(db: Database) -> None:
    cfg = config(
        routing=CFG.routing.model_dump(), insight={"enabled": True}, survey={"enabled": True}
    )
    router = Router(cfg)
    consent = ConsentObserver(Templates())
    registered = Observers()
    registered.add(Phase.MIRROR, mirror_observer(STAFF_ROOM))
    registered.add(Phase.CHANNEL, email_events.on_bounce)
    registered.add(Phase.CONSENT, consent)
    registered.add(Phase.COMPLAINT, ComplaintAlerts(router, STAFF_ROOM))
    registered.add(Phase.ACKNOWLEDGE, Acknowledger(cfg))
    registered.add(Phase.SURVEY, survey.survey_observer)
    registered.add(
        Phase.INSIGHT, Churn(cfg, router, staff_room=STAFF_ROOM, is_opt_out=consent.is_opt_out)
    )
    async with db.transaction() as s:  # someone on duty: the router assigns (round robin)
        await staff.add(s, "ann")
    watch = Watch()
    watch.listen(db)
    pipeline = plugged_pipeline(
        db, route=watch.wrap_router(router), observers=[watch.wrap(o) for o in registered]
    )
    later = NIGHT + timedelta(minutes=5)
    batch = [
        message(1, "where is my order?", NIGHT, user="asks"),
        message(2, "包裹破了，第三次了！太失望了，我要投诉", NIGHT, user="angry"),
        message(3, "stop", later, user="asks"),
        message(4, "this is unacceptable, I want a refund now", later, user="angry"),
    ]
    for inbound in batch:
        await pipeline.receive(inbound)
    await pipeline.close()
    assert watch.seen == []
    async with db.sessions() as s:
        consented = await s.scalar(
            select(Customer.marketing_consent)
            .join(Interaction, Interaction.customer_id == Customer.id)
            .where(Interaction.external_id == "shop:3")
        )
        flagged = await s.scalar(
            select(func.count()).where(Interaction.meta["kind"].as_string() == "complaint_flagged")
        )
        acks = await s.scalar(select(func.count()).select_from(Acknowledgement))
        posts = await s.scalar(
            select(func.count()).where(OutboxRow.address == str(STAFF_CHAT))
        )
        scored = await s.scalar(select(func.count()).select_from(CustomerHealth))
    # ... and what they asked for was written.
    assert consented is False
    assert flagged and acks and posts
    assert scored == 2
    async with db.sessions() as s:
        assigned = await s.scalar(select(RoutingCursor.last_staff_id))
    assert assigned is not None


async def test_the_watch_sees_an_observer_that_writes(db: Database) -> None:
    """The check above can fail: an observer that writes through the session (here by breaking
    into the lookup's private one: it is handed no other) is caught."""
    from sqlalchemy import update

    async def writes(reads: Any, note: Logged) -> Effects | None:
        await reads._session.execute(
            update(Customer).where(Customer.id == note.customer.id).values(vip=True)
        )
        return None

    watch = Watch()
    watch.listen(db)
    pipeline = plugged_pipeline(db, route=Router(CFG), observers=[watch.wrap(writes)])
    await pipeline.receive(message(1, "hello", NIGHT))
    await pipeline.close()
    assert watch.seen and watch.seen[0].startswith("UPDATE")


async def test_observers_the_router_and_the_answer_check_get_no_session(db: Database) -> None:
    """What the pipeline hands a handler has reads only: not the session, nor anything public
    that leads to one, so a handler cannot add, flush, execute or commit."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

    from bot.effects import Decision
    from bot.pipeline import Pipeline
    from handlers import complaints

    handed: dict[str, Any] = {}

    async def observer(reads: Any, note: Logged) -> Effects | None:
        handed["observer"] = reads
        return None

    class Batched:
        async def __call__(self, reads: Any, note: Logged) -> Effects | None:
            return None

        async def observe_batch(self, reads: Any, notes: Sequence[Logged]) -> Effects | None:
            handed["observe_batch"] = reads
            return None

    async def route(reads: Any, *_: Any) -> Decision:
        handed["route"] = reads
        return Decision()

    async def answer(reads: Any, conversation_id: int, inbound: Any) -> None:
        handed["answer"] = reads
        return None

    pipeline = Pipeline(
        db,
        classify=complaints.classify,
        explicit=complaints.explicit,
        route=route,
        answer=answer,
        observers=[observer, Batched()],
    )
    first = await pipeline.receive(message(1, "hello", NIGHT))
    async with db.transaction() as s:  # resolved: the next message is asked about first
        from storage.models import Conversation

        conversation = await s.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.status = "resolved"
    await pipeline.receive(message(2, "hello again", NIGHT + timedelta(minutes=1)))
    await pipeline.close()
    assert set(handed) == {"observer", "observe_batch", "route", "answer"}
    writers = (AsyncSession, Session, AsyncConnection, Connection)
    for who, reads in handed.items():
        assert not isinstance(reads, writers), who
        for verb in ("add", "add_all", "flush", "commit", "execute", "delete", "merge", "run_sync"):
            assert not hasattr(reads, verb), (who, verb)
        for name in dir(reads):
            if not name.startswith("_"):
                assert not isinstance(getattr(reads, name), writers), (who, name)


async def test_the_sla_resume_plug_in_gets_plain_values_not_the_row(db: Database) -> None:
    """A pending conversation's customer answers: the resume plug-in is shown the due times and
    hands back the moved ones; the pipeline stores them (it never holds the row)."""
    from bot.effects import Decision, SlaDue
    from bot.pipeline import Pipeline
    from handlers import complaints
    from storage.models import Base, Conversation

    shown: list[tuple[Any, ...]] = []
    moved = NIGHT + timedelta(days=2)

    def resume(*args: Any) -> SlaDue:
        shown.append(args)
        return SlaDue(None, moved, None, None)

    async def route(*_: Any) -> Decision:
        return Decision()

    pipeline = Pipeline(
        db, classify=complaints.classify, explicit=complaints.explicit, route=route,
        resume=resume,
    )
    first = await pipeline.receive(message(1, "hello", NIGHT))
    async with db.transaction() as s:
        conversation = await s.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.status, conversation.sla_paused_at = "pending", NIGHT
    await pipeline.receive(message(2, "here you are", NIGHT + timedelta(minutes=5)))
    await pipeline.close()
    assert len(shown) == 1
    assert not any(isinstance(a, Base) for a in shown[0]), shown
    async with db.sessions() as s:
        stored = await s.get(Conversation, first.conversation_id)
    assert stored is not None and stored.sla_paused_at is None
    assert stored.first_response_due_at is not None
    assert stored.first_response_due_at.replace(tzinfo=None) == moved.replace(tzinfo=None)
