"""Report figures from SQL aggregates, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import reports as report
from storage import staff
from storage.db import Database
from storage.models import ComplaintReason, Conversation, Customer, SlaBreach, Survey

MON = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # Monday
SUN = datetime(2027, 3, 7, 23, 0, tzinfo=UTC)  # Sunday of the same week
NEXT = datetime(2027, 3, 8, 0, 30, tzinfo=UTC)  # Monday of the next


async def seed(db: Database) -> tuple[int, int]:
    async with db.transaction() as s:
        amy = await staff.add(s, "amy")
        bob = await staff.add(s, "bob")
        customer = Customer(tags=[])
        s.add(customer)
        await s.flush()
        # First responses of 1..10 minutes: median (nearest rank) 5 min, p90 9 min.
        for n in range(1, 11):
            created = MON + timedelta(hours=n)
            s.add(
                Conversation(
                    customer_id=customer.id,
                    created_at=created,
                    updated_at=created,
                    assignee=amy.id if n <= 6 else bob.id,
                    first_response_at=created + timedelta(minutes=n),
                    resolved_at=created + timedelta(hours=n) if n <= 4 else None,
                    status="resolved" if n <= 4 else "open",
                )
            )
        complaints = [
            Conversation(
                customer_id=customer.id,
                created_at=MON,
                updated_at=MON,
                is_complaint=True,
                severity="high",
                assignee=amy.id,
            ),
            Conversation(
                customer_id=customer.id,
                created_at=SUN,
                updated_at=SUN,
                is_complaint=True,
                severity="normal",
            ),
            Conversation(
                customer_id=customer.id,
                created_at=NEXT,
                updated_at=NEXT,
                is_complaint=True,
                severity="normal",
            ),
        ]
        s.add_all(complaints)
        await s.flush()
        for conversation, reasons in zip(
            complaints, (["delay", "rude"], ["delay"], ["defect", "delay"]), strict=True
        ):
            s.add_all(ComplaintReason(conversation_id=conversation.id, reason=r) for r in reasons)
        for n, score in enumerate((5, 4, 4, None)):
            s.add(
                Survey(
                    conversation_id=complaints[0].id,
                    customer_id=customer.id,
                    resolution=n + 1,
                    assignee=amy.id,
                    channel="webhook",
                    asked_at=MON,
                    expires_at=MON + timedelta(days=7),
                    score=score,
                    answered_at=MON if score else None,
                )
            )
        s.add(
            SlaBreach(
                conversation_id=complaints[0].id,
                target="first_response",
                cycle=0,
                priority="urgent",
                team="care",
                assignee=amy.id,
                due_at=MON,
                breached_at=MON + timedelta(hours=1),
            )
        )
        return amy.id, bob.id


async def test_report_figures(db: Database) -> None:
    await seed(db)
    async with db.sessions() as s:
        data = (await report.build(s)).to_json()
    c = data["complaints"]
    assert c["total"] == 3
    assert c["by_week"] == [{"week": "2027-03-01", "count": 2}, {"week": "2027-03-08", "count": 1}]
    assert c["by_severity"] == {"high": 1, "normal": 2}
    assert c["by_cue"] == [
        {"reason": "delay", "count": 3},
        {"reason": "defect", "count": 1},
        {"reason": "rude", "count": 1},
    ]
    first = data["response_times"]["first_response"]
    assert first == {"count": 10, "median_seconds": 300.0, "p90_seconds": 540.0}
    resolution = data["response_times"]["resolution"]
    assert resolution == {"count": 4, "median_seconds": 7200.0, "p90_seconds": 14400.0}
    assert data["csat"] == {"asked": 4, "answered": 3, "response_rate": 0.75, "average": 4.33,
                            "distribution": {"1": 0, "2": 0, "3": 0, "4": 2, "5": 1}}
    assert data["sla"]["breaches"] == 1 and data["sla"]["by_priority"] == {"urgent": 1}
    amy, bob = data["agents"]
    assert (amy["name"], amy["assigned"], amy["resolved"], amy["complaints"]) == ("amy", 7, 4, 1)
    assert amy["first_response_median_seconds"] == 180.0  # 1..6 minutes: 3rd of 6
    assert (amy["csat_average"], amy["sla_breaches"]) == (4.33, 1)
    assert (
        bob["name"],
        bob["assigned"],
        bob["first_response_median_seconds"],
        bob["csat_average"],
    ) == ("bob", 4, 480.0, None)


async def test_since_limits_every_section(db: Database) -> None:
    await seed(db)
    async with db.sessions() as s:
        data = (await report.build(s, NEXT)).to_json()
    assert data["complaints"]["total"] == 1
    assert data["response_times"]["first_response"]["count"] == 0
    assert data["csat"]["asked"] == 0 and data["sla"]["breaches"] == 0
