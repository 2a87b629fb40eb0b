"""Routing decisions, table-driven from tests/fixtures/routing/*.toml; assignment on a real
database."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.config import ConfigError, parse_config
from bot.messages import Inbound
from handlers.business_hours import BusinessHours
from handlers.complaints import NOT_A_COMPLAINT, Verdict
from handlers.routing import Router
from storage import staff
from storage.db import Database
from storage.lookup import SessionLookup
from storage.models import Conversation, Customer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "routing"


def load(name: str) -> dict[str, Any]:
    return tomllib.loads((FIXTURES / name).read_text(encoding="utf-8"))


def cases() -> list[Any]:
    return [pytest.param(c, id=c["id"]) for c in load("teams.toml")["case"]]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def inputs(case: dict[str, Any]) -> tuple[Verdict, Customer, Inbound]:
    severity = case.get("complaint")
    verdict = Verdict(True, severity, 0.9, ("test",)) if severity else NOT_A_COMPLAINT
    customer = Customer(
        id=1, language=case.get("language"), tags=case.get("tags", []), vip=case.get("vip", False)
    )
    inbound = Inbound(
        channel=case.get("channel", "webhook"),
        external_id="x",
        address="shop:u",
        text=case.get("text", "hi"),
        received_at=when(case["at"]),
    )
    return verdict, customer, inbound


@pytest.mark.parametrize("case", cases())
async def test_decision(case: dict[str, Any], tmp_path: Path) -> None:
    router = Router(parse_config(load("teams.toml")["config"]))
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
    await db.upgrade()
    verdict, customer, inbound = inputs(case)
    async with db.transaction() as session:
        decision = await router(SessionLookup(session), verdict, customer, None, inbound)
    await db.dispose()
    for key, want in case["expect"].items():
        got = getattr(decision, key)
        expected = want
        if key.endswith(("_due", "_by")):
            expected = None if want == "none" else when(want)
        assert got == expected, f"{key}: {got!r} != {expected!r}"
    assert decision.notify_staff == verdict.is_complaint


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rules": [{"team": "nope"}]}, "[routing.rules.0] team has value 'nope'"),
        ({"default_team": "x"}, "[routing] default_team has value 'x'"),
        ({"teams": [{"name": "a"}, {"name": "a"}]}, "[routing.teams.1] name has value 'a'"),
    ],
)
def test_router_config_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Router(parse_config({"routing": section}))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"routing": {"teams": [{"name": "a", "hours": {"mon": "9-18"}}]}},
            "[routing.teams.0] hours",
        ),
        (
            {"routing": {"teams": [{"name": "a", "hours": {"funday": "09:00-18:00"}}]}},
            "'funday' is not a day",
        ),
        (
            {"routing": {"teams": [{"name": "a", "timezone": "Mars/Base"}]}},
            "[routing.teams.0] timezone has value 'Mars/Base'",
        ),
        ({"routing": {"assignment": "random"}}, "[routing] assignment has value 'random'"),
        (
            {"sla": {"first_response": {"urgent": "soon"}}},
            "[sla.first_response] urgent has value 'soon'",
        ),
        ({"sla": {"first_response": {"asap": "1h"}}}, "[sla.first_response.asap]"),
        (
            {"lifecycle": {"auto_close_after": "7 days"}},
            "[lifecycle] auto_close_after has value '7 days'",
        ),
    ],
)
def test_config_errors_name_the_key_and_value(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(section)
    assert message in str(caught.value)


def test_default_config_is_one_team_around_the_clock() -> None:
    router = Router(parse_config({}))
    assert list(router.teams) == ["support"]
    sunday_night = datetime(2027, 2, 7, 23, 30, tzinfo=UTC)
    assert router.hours["support"].is_open(sunday_night)


def test_business_hours_across_dst() -> None:
    hours = BusinessHours("Europe/London", {"mon": "09:00-17:30"})
    # The Monday after the clocks go forward (2027-03-28): 09:00 BST is 08:00 UTC.
    sunday = datetime(2027, 3, 28, 12, 0, tzinfo=UTC)
    assert hours.next_open(sunday) == datetime(2027, 3, 29, 8, 0, tzinfo=UTC)
    assert hours.is_open(datetime(2027, 3, 29, 16, 29, tzinfo=UTC))
    assert not hours.is_open(datetime(2027, 3, 29, 16, 30, tzinfo=UTC))


async def _conversation(session: Any, customer_id: int) -> Conversation:
    conversation = Conversation(customer_id=customer_id, created_at=datetime.now(UTC))
    session.add(conversation)
    await session.flush()
    return conversation


@pytest.mark.parametrize("assignment", ["round_robin", "least_open"])
async def test_assignment_among_on_duty_team_members(db: Database, assignment: str) -> None:
    config = parse_config(
        {
            "routing": {
                "assignment": assignment,
                "teams": [{"name": "care", "members": ["ann", "ben", "cat", "dov"]}],
            }
        }
    )
    router = Router(config)
    inbound = Inbound("webhook", "x", "shop:u", "hi")
    async with db.transaction() as s:
        reads = SessionLookup(s)
        ann = await staff.add(s, "ann")
        ben = await staff.add(s, "ben")
        cat = await staff.add(s, "cat")
        dov = await staff.add(s, "dov")
        await staff.add(s, "outsider")
        cat.on_duty = False
        dov.active = False
        customer = Customer(tags=[])
        s.add(customer)
        await s.flush()
        picks = []
        for _ in range(4):
            conversation = await _conversation(s, customer.id)
            decision = await router(reads, NOT_A_COMPLAINT, customer, conversation, inbound)
            conversation.assignee = decision.assignee_id
            picks.append(decision.assignee_id)
        # Already assigned: the router leaves it alone.
        kept = await router(reads, NOT_A_COMPLAINT, customer, conversation, inbound)
    assert picks == [ann.id, ben.id, ann.id, ben.id]
    assert kept.assignee_id is None


async def test_least_open_prefers_the_lighter_load(db: Database) -> None:
    router = Router(parse_config({"routing": {"assignment": "least_open"}}))
    inbound = Inbound("webhook", "x", "shop:u", "hi")
    async with db.transaction() as s:
        reads = SessionLookup(s)
        ann = await staff.add(s, "ann")
        ben = await staff.add(s, "ben")
        customer = Customer(tags=[])
        s.add(customer)
        await s.flush()
        for _ in range(2):
            (await _conversation(s, customer.id)).assignee = ann.id
        closed = await _conversation(s, customer.id)
        closed.assignee, closed.status = ben.id, "closed"
        decision = await router(
            reads, NOT_A_COMPLAINT, customer, await _conversation(s, customer.id), inbound
        )
    assert decision.assignee_id == ben.id


async def test_a_conversation_that_turns_into_a_complaint_moves_to_the_complaints_team(
    db: Database,
) -> None:
    router = Router(parse_config({"routing": {
        "teams": [{"name": "sales", "members": ["sam"]}, {"name": "care", "members": ["carol"]}],
        "rules": [{"complaint": True, "team": "care"}],
    }}))
    inbound = Inbound("webhook", "x", "shop:u", "hi")
    async with db.transaction() as s:
        reads = SessionLookup(s)
        sam = await staff.add(s, "sam")
        carol = await staff.add(s, "carol")
        customer = Customer(tags=[])
        s.add(customer)
        await s.flush()
        conversation = await _conversation(s, customer.id)
        first = await router(reads, NOT_A_COMPLAINT, customer, conversation, inbound)
        conversation.team, conversation.assignee = first.team, first.assignee_id
        second = await router(
            reads, Verdict(True, "normal", 0.8, ("delay",)), customer, conversation, inbound
        )
    assert (first.team, first.assignee_id) == ("sales", sam.id)
    assert (second.team, second.assignee_id, second.reassign, second.new_complaint) == (
        "care",
        carol.id,
        True,
        True,
    )


def test_business_clock_adds_and_counts_open_time_only() -> None:
    hours = BusinessHours(
        "Europe/London", {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")}
    )
    friday_1600 = datetime(2027, 3, 26, 16, 0, tzinfo=UTC)  # GMT; the clocks go forward on Sunday
    monday_1100_bst = datetime(2027, 3, 29, 10, 0, tzinfo=UTC)
    assert hours.add(friday_1600, timedelta(hours=3)) == monday_1100_bst
    assert hours.between(friday_1600, monday_1100_bst) == timedelta(hours=3)
    assert hours.between(monday_1100_bst, friday_1600) == timedelta(0)
    never = BusinessHours("UTC", {"mon": "09:00-10:00"}, closed_dates=["2027-03-29"] + [
        f"{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29)
    ])
    assert hours.add(friday_1600 + timedelta(hours=1, minutes=30), timedelta(0)) == datetime(
        2027, 3, 29, 8, 0, tzinfo=UTC
    )
    assert never.add(friday_1600, timedelta(hours=1)) is None


def test_a_team_open_a_minute_a_week_gets_a_due_time_without_walking_decades() -> None:
    hours = BusinessHours("UTC", {"sun": "00:00-00:01"})
    monday = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    assert hours.add(monday, timedelta(minutes=2)) == datetime(2027, 3, 14, 0, 1, tzinfo=UTC)
    # beyond the horizon: the caller's wall clock
    assert (hours.add(monday, timedelta(hours=72)) is None)


async def test_round_robin_continues_across_pipeline_transactions(db: Database) -> None:
    """The router only decides; the pipeline stores the cursor it moved (Decision.round_robin),
    so the next batch, in a new transaction, carries on where this one stopped."""
    from bot.plugins import pipeline as plugged_pipeline
    from storage.models import RoutingCursor

    config = parse_config({"routing": {"teams": [{"name": "care", "members": ["ann", "ben"]}]}})
    async with db.transaction() as s:
        ann = await staff.add(s, "ann")
        ben = await staff.add(s, "ben")
    pipeline = plugged_pipeline(db, route=Router(config))
    picks = []
    for n in range(3):  # one message at a time: each is its own batch and transaction
        receipt = await pipeline.receive(Inbound("webhook", f"m{n}", f"shop:u{n}", "hello"))
        async with db.sessions() as s:
            conversation = await s.get(Conversation, receipt.conversation_id)
            assert conversation is not None
            picks.append(conversation.assignee)
    await pipeline.close()
    assert picks == [ann.id, ben.id, ann.id]
    async with db.sessions() as s:
        cursor = (await s.scalars(select(RoutingCursor))).one()
    assert (cursor.team, cursor.last_staff_id) == ("care", ann.id)


async def _duty_pipeline(db: Database) -> Any:
    from bot.plugins import pipeline as plugged_pipeline

    config = parse_config(
        {
            "routing": {
                "assignment": "round_robin",
                "teams": [{"name": "care", "members": ["ann", "ben", "cat"]}],
            }
        }
    )
    async with db.transaction() as s:
        await staff.add(s, "ann")
        (await staff.add(s, "ben")).on_duty = False
        (await staff.add(s, "cat")).active = False
        await staff.add(s, "outsider")
    return plugged_pipeline(db, route=Router(config))


async def _assignee(db: Database, conversation_id: int | None) -> str | None:
    from storage.models import Staff

    async with db.sessions() as s:
        return await s.scalar(
            select(Staff.name)
            .join(Conversation, Conversation.assignee == Staff.id)
            .where(Conversation.id == conversation_id)
        )


async def test_a_change_of_duty_by_another_process_counts_from_the_next_batch(
    db: Database,
) -> None:
    # The router's team on duty is read in each batch's transaction: a change committed by
    # another connection (another kefu process, an admin's SQL) before a batch starts is seen by
    # that batch, never a roster of an earlier one.
    from sqlalchemy import text

    pipeline = await _duty_pipeline(db)
    now = datetime.now(UTC)
    first = await pipeline.receive_many([Inbound("webhook", "m1", "shop:a", "hi", received_at=now)])
    assert await _assignee(db, first[0].conversation_id) == "ann"
    other = Database(db.url.render_as_string(hide_password=False))
    try:
        async with other.transaction() as s:
            await s.execute(text("UPDATE staff SET on_duty = (name = 'ben')"))
        then = await pipeline.receive_many(
            [Inbound("webhook", "m2", "shop:b", "hi", received_at=now)]
        )
        assert await _assignee(db, then[0].conversation_id) == "ben"
        async with other.transaction() as s:
            await s.execute(text("UPDATE staff SET on_duty = false"))
        nobody = await pipeline.receive_many(
            [Inbound("webhook", "m3", "shop:c", "hi", received_at=now)]
        )
        assert await _assignee(db, nobody[0].conversation_id) is None
        async with other.transaction() as s:
            await s.execute(text("UPDATE staff SET on_duty = true, active = (name <> 'ann')"))
        last = await pipeline.receive_many(
            [Inbound("webhook", f"d{n}", f"shop:d{n}", "hi", received_at=now) for n in range(4)]
        )
        # cat is active again; ann is not; the outsider is on no team
        assert [await _assignee(db, r.conversation_id) for r in last] == [
            "cat", "ben", "cat", "ben"
        ]
    finally:
        await pipeline.close()
        await other.dispose()


async def test_the_team_on_duty_costs_no_round_trip_of_its_own(db: Database) -> None:
    # PostgreSQL (#16): the batch's dedupe read brings the active staff; the router asks no
    # statement of its own (SQLite reads them in process, as before).
    from sqlalchemy import event

    pipeline = await _duty_pipeline(db)
    sent: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        sent.append(" ".join(statement.split()))

    now = datetime.now(UTC)
    receipts = await pipeline.receive_many(
        [Inbound("webhook", f"m{n}", f"shop:u{n}", "hi", received_at=now) for n in range(3)]
    )
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    await pipeline.close()
    assert [await _assignee(db, r.conversation_id) for r in receipts] == ["ann"] * 3
    if not db.is_sqlite:
        assert not [s for s in sent if s.startswith("SELECT staff.")], sent
