"""Segments: SQL membership and the per-customer check agree; routing rules and campaigns use
them."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import event, select, update

from bot.config import ConfigError
from handlers import complaints, segments
from handlers.greetings import Planner, Reach
from handlers.routing import Router
from handlers.templating import Templates
from storage.db import Database
from storage.lookup import SessionLookup
from storage.models import Customer
from tests.handlers.care_helpers import config, message
from tests.handlers.test_churn import T0, seeded

NOW = T0 + timedelta(days=21, hours=6)
SEGMENTS = {
    "unhappy": {"band": ["watch", "at_risk"]},
    "at_risk": {"band": "at_risk"},
    "silent": {"activity": "silent", "days": 14},
    "active": {"activity": "active", "days": 7},
    "lapsed": {"activity": "lapsed", "days": 14},
    "new": {"activity": "new", "days": 30},
    "gold_zh": {"tags": ["gold"], "language": "zh"},
    "webhook_vip": {"channel": "webhook", "vip": True},
    "consenting": {"marketing_consent": True, "has_birthday": True},
}
CFG = config(
    insight={"segments": SEGMENTS},
    routing={
        "teams": [{"name": "care"}, {"name": "retention"}],
        "rules": [{"segment": "at_risk", "team": "retention", "priority": "urgent"}],
    },
    webhook={"sources": {"shop": {"secret_env": "S", "callback_url": "http://127.0.0.1:9/cb"}}},
    campaigns={"birthday": {"enabled": True, "segment": {"segment": "unhappy"}}},
)


async def test_membership_routing_and_campaigns(db: Database) -> None:
    churn, ids = await seeded(db)
    await churn.recompute(db, NOW)
    async with db.transaction() as s:
        await s.execute(
            update(Customer)
            .where(Customer.id == ids["content"])
            .values(tags=["gold"], language="zh", vip=True, created_at=NOW - timedelta(days=3))
        )
        await s.execute(
            update(Customer)
            .where(Customer.id.in_([ids["burnt"], ids["content"]]))
            .values(
                marketing_consent=True,
                birthday_md="03-25",
                birthday=date(1990, 3, 25),
                timezone="Asia/Shanghai",
            )
        )
    got = {name: await segments.members(db, CFG, name, NOW) for name in SEGMENTS}
    names = {v: k for k, v in ids.items()}
    who = {name: sorted(names[i] for i in found) for name, found in got.items()}
    assert who["unhappy"] == ["angry", "burnt"]
    assert who["at_risk"] == ["angry"]
    assert who["silent"] == ["burnt", "content", "quiet"]  # last wrote three weeks ago
    assert who["lapsed"] == ["burnt", "content", "quiet"]
    assert who["active"] == ["angry", "busy"]
    assert who["new"] == ["content"]
    assert who["gold_zh"] == ["content"]
    assert who["webhook_vip"] == ["content"]
    assert who["consenting"] == ["burnt", "content"]

    # The per-customer check (the router's) agrees with the SQL for every customer.
    async with db.sessions() as s:
        for customer in await s.scalars(select(Customer)):
            inside = await segments.of_customer(SessionLookup(s), CFG, customer, "webhook", NOW)
            assert inside == {n for n, found in got.items() if customer.id in found}, names[
                customer.id
            ]

    # A routing rule on a segment: the at-risk customer's next message goes to retention, urgent.
    router = Router(CFG)
    async with db.transaction() as s:
        reads = SessionLookup(s)
        angry = await s.get(Customer, ids["angry"])
        burnt = await s.get(Customer, ids["burnt"])
        assert angry is not None and burnt is not None
        hello = message("x1", "hello again", NOW, user="angry")
        decision = await router(reads, complaints.classify("hello again", None), angry, None, hello)
        assert (decision.team, decision.priority) == ("retention", "urgent")
        decision = await router(reads, complaints.classify("hello again", None), burnt, None, hello)
        assert decision.team == "care"

    # A campaign on a segment: of the two with a birthday and consent, only the unhappy one.
    planner = Planner(CFG, Templates(None, "zh"), Reach.of(CFG, {"webhook"}))
    greeted = await planner.preview(db, "birthday", date(2027, 3, 25), NOW)
    assert [g.customer_id for g in greeted] == [ids["burnt"]]


def test_unknown_segment_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[routing.rules.0\] segment has value 'vips'"):
        Router(config(routing={"rules": [{"segment": "vips", "priority": "high"}]}))


async def test_routing_on_a_segment_reads_only_what_that_segment_needs(db: Database) -> None:
    """The router asks which segments a customer is in for every message: only the segments its
    rules name, and the customer's health row only for one that needs it (band, activity). A rule
    on tags and language costs no read at all; one on a band, one."""
    churn, ids = await seeded(db)
    await churn.recompute(db, NOW)
    async with db.transaction() as s:
        await s.execute(
            update(Customer)
            .where(Customer.id == ids["content"])
            .values(tags=["gold"], language="zh")
        )
    statements: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_rest: object) -> None:
        statements.append(statement.split("\n")[0][:60])

    hello = message("x1", "hello again", NOW, user="content")
    for rules, team, reads in (
        ([{"segment": "gold_zh", "team": "retention"}], "retention", 0),
        ([{"segment": "at_risk", "team": "retention"}], "care", 1),
    ):
        routed = config(
            insight={"segments": SEGMENTS},
            routing={"teams": [{"name": "care"}, {"name": "retention"}], "rules": rules},
        )
        router = Router(routed)
        async with db.transaction() as s:
            content = await s.get(Customer, ids["content"])
            assert content is not None
            reads_of = SessionLookup(s)
            verdict = complaints.classify("hello again", None)
            await router(reads_of, verdict, content, None, hello)  # staff and cursors: cached
            event.listen(db.engine.sync_engine, "before_cursor_execute", record)
            try:
                decision = await router(reads_of, verdict, content, None, hello)
            finally:
                event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        assert decision.team == team
        assert len(statements) == reads, statements
        statements.clear()
