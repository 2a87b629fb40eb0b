"""Greeting rules and the planner, with an injected clock: nothing here waits for real time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.config import ConfigError, QuietHoursConfig, parse_config
from bot.scheduler import CampaignScheduler
from handlers import greetings
from handlers.greetings import Planner, Reach, choose_channel, holidays_on, occasion, timing
from handlers.templating import Templates
from storage.campaigns import Reachable
from storage.db import Database
from storage.models import CampaignDelivery, Customer, Identity, Interaction, OutboxRow

QUIET = QuietHoursConfig()
NO_QUIET = QuietHoursConfig(enabled=False)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def config(**campaigns: Any) -> Any:
    base: dict[str, Any] = {"birthday": {"enabled": True}, "holidays": {"enabled": True}}
    base.update(campaigns)
    return parse_config(
        {
            "campaigns": base,
            "webhook": {"sources": {"shop": {"secret_env": "S", "callback_url": "http://127.0.0.1:1/cb"}}},
        }
    )


def planner(
    cfg: Any | None = None, channels: Sequence[str] = ("webhook", "telegram", "email")
) -> Planner:
    cfg = cfg or config()
    return Planner(cfg, Templates(), Reach.of(cfg, channels))


async def add_customer(
    db: Database,
    *,
    name: str = "Ann",
    birthday: date | None = date(1990, 1, 5),
    md: str | None = None,
    tz: str | None = "Asia/Shanghai",
    language: str | None = "zh",
    consent: bool = True,
    identities: Sequence[tuple[str, str]] = (),
    **fields: Any,
) -> int:
    async with db.transaction() as session:
        customer = Customer(
            display_name=name,
            birthday=birthday,
            birthday_md=md or (birthday.strftime("%m-%d") if birthday else None),
            timezone=tz,
            language=language,
            marketing_consent=consent,
            tags=fields.pop("tags", []),
            **fields,
        )
        session.add(customer)
        await session.flush()
        for channel, address in identities or [("webhook", f"shop:{name}")]:
            session.add(Identity(customer_id=customer.id, channel=channel, address=address))
        return customer.id


async def deliveries(db: Database) -> list[CampaignDelivery]:
    async with db.sessions() as session:
        return list(
            await session.scalars(select(CampaignDelivery).order_by(CampaignDelivery.customer_id))
        )


async def count(db: Database, model: Any) -> int:
    async with db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


# --- when ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        # both sides of the date line: Auckland's 5 January starts while Los Angeles is on the 4th
        ("Pacific/Auckland", date(2027, 1, 5), utc(2027, 1, 4, 20)),
        ("America/Los_Angeles", date(2027, 1, 5), utc(2027, 1, 5, 17)),
        ("Asia/Shanghai", date(2027, 1, 5), utc(2027, 1, 5, 1)),
        # DST: Los Angeles springs forward on 14 March 2027, Auckland falls back on 4 April 2027
        ("America/Los_Angeles", date(2027, 3, 13), utc(2027, 3, 13, 17)),
        ("America/Los_Angeles", date(2027, 3, 14), utc(2027, 3, 14, 16)),
        ("Pacific/Auckland", date(2027, 4, 3), utc(2027, 4, 2, 20)),
        ("Pacific/Auckland", date(2027, 4, 4), utc(2027, 4, 3, 21)),
    ],
    ids=str,
)
def test_send_time_is_local_nine_oclock(zone: str, day: date, expected: datetime) -> None:
    t = timing(day, ZoneInfo(zone), time(9), utc(2026, 1, 1), QUIET, lead=None)
    assert (t.kind, t.send_at) == ("send", expected)
    assert t.expires_at == datetime.combine(day + timedelta(days=1), time(0), ZoneInfo(zone))


def test_catch_up_sends_now_on_the_same_local_day_and_never_the_day_after() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    # kefu comes back at 11:00 Shanghai time: the 09:00 greeting goes out now
    now = utc(2027, 1, 5, 3)
    assert timing(date(2027, 1, 5), shanghai, time(9), now, QUIET, lead=None).send_at == now
    # 00:30 on the 6th in Shanghai: the day is over, nothing goes out
    late = timing(date(2027, 1, 5), shanghai, time(9), utc(2027, 1, 5, 16, 30), QUIET, lead=None)
    assert late.kind == "late"


def test_quiet_hours_push_to_the_same_day_or_drop() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    day = date(2027, 1, 5)
    # a 07:00 send time waits for the end of quiet hours at 08:00
    early = timing(day, shanghai, time(7), utc(2027, 1, 4), QUIET, lead=None)
    assert early.send_at == utc(2027, 1, 5, 0)  # 08:00 in Shanghai
    # catch-up at 22:00: the next allowed time is tomorrow, so the greeting is dropped
    night = timing(day, shanghai, time(9), utc(2027, 1, 5, 14), QUIET, lead=None)
    assert night.kind == "skip" and "quiet hours 21:00-08:00" in (night.reason or "")
    # without quiet hours the catch-up goes out at once
    assert timing(day, shanghai, time(9), utc(2027, 1, 5, 14), NO_QUIET, lead=None).kind == "send"


def test_the_scheduler_plans_only_shortly_before_the_send_time() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    lead = timedelta(minutes=20)
    assert (
        timing(date(2027, 1, 5), shanghai, time(9), utc(2027, 1, 5, 0, 30), QUIET, lead=lead).kind
        == "wait"
    )
    due = timing(date(2027, 1, 5), shanghai, time(9), utc(2027, 1, 5, 0, 45), QUIET, lead=lead)
    assert (due.kind, due.send_at) == ("send", utc(2027, 1, 5, 1))


# --- which day -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "day", "month_days"),
    [
        ("feb28", date(2027, 2, 28), ("02-28", "02-29")),
        ("feb28", date(2027, 3, 1), ("03-01",)),
        ("mar1", date(2027, 2, 28), ("02-28",)),
        ("mar1", date(2027, 3, 1), ("03-01", "02-29")),
        ("feb28", date(2028, 2, 28), ("02-28",)),
        ("feb28", date(2028, 2, 29), ("02-29",)),
        ("mar1", date(2028, 3, 1), ("03-01",)),
    ],
    ids=str,
)
def test_born_on_29_february(rule: str, day: date, month_days: tuple[str, ...]) -> None:
    assert greetings.birthday_month_days(day, rule) == month_days


def test_lunar_holidays_on_their_first_day_only() -> None:
    cfg = config().campaigns
    assert holidays_on(cfg, date(2027, 2, 6)) == [
        {"zh": "春节", "en": "Chinese New Year (Spring Festival)"}
    ]
    assert holidays_on(cfg, date(2027, 2, 7)) == []  # the second day of 春节
    assert holidays_on(cfg, date(2027, 2, 5)) == []  # 除夕 was not chosen
    assert holidays_on(cfg, date(2027, 9, 15)) == [{"zh": "中秋节", "en": "Mid-Autumn Festival"}]
    assert holidays_on(cfg, date(2027, 10, 1)) == []  # 国庆节 was not chosen
    occ = occasion(cfg, "holiday", date(2027, 9, 15))
    assert occ is not None and (occ.key, occ.template) == ("2027-09-15", "greeting_mid_autumn")


def test_every_public_holiday_when_none_are_chosen_and_custom_dates() -> None:
    cfg = config(
        holidays={
            "enabled": True,
            "holidays": [],
            "custom": [{"date": "11-11", "name": "店庆", "name_en": "Our anniversary"}],
        }
    ).campaigns
    assert [h["zh"] for h in holidays_on(cfg, date(2027, 2, 5))] == ["农历除夕"]
    # observed (补假) days are not holidays to greet
    assert (holidays_on(cfg, date(2027, 2, 9)) == [])
    assert [h["zh"] for h in holidays_on(cfg, date(2027, 10, 1))] == ["国庆节"]
    custom = occasion(cfg, "holiday", date(2027, 11, 11))
    assert custom is not None and custom.names == {"zh": "店庆", "en": "Our anniversary"}
    assert custom.template == "greeting_holiday"


def test_holidays_by_english_name_and_in_another_country() -> None:
    cfg = config(
        holidays={"enabled": True, "countries": ["US"], "holidays": ["Thanksgiving Day"]}
    ).campaigns
    assert holidays_on(cfg, date(2027, 11, 25)) == [
        {"zh": "Thanksgiving Day", "en": "Thanksgiving Day"}
    ]


@pytest.mark.parametrize(
    ("campaigns", "message"),
    [
        (
            {"holidays": {"holidays": ["春季节"]}},
            "[campaigns.holidays] holidays has value '春季节': not a holiday of CN",
        ),
        ({"holidays": {"countries": ["XX"]}}, "[campaigns.holidays] countries has value 'XX'"),
        (
            {"birthday": {"template": "nope"}},
            "[campaigns.birthday] template has value 'nope': template zh/nope.j2",
        ),
        ({"channel_order": ["sms"]}, "[campaigns] channel_order has value 'sms'"),
    ],
    ids=str,
)
def test_bad_config_stops_start_up_with_a_clear_message(
    campaigns: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        greetings.validate(config(**campaigns), Templates(), today=date(2027, 1, 1))
    assert message in str(caught.value)


def test_a_template_using_an_unknown_field_stops_start_up(tmp_path: Any) -> None:
    for lang in ("zh", "en"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "greeting_birthday.j2").write_text("Hi {{ customer.nickname }}")
    with pytest.raises(ConfigError) as caught:
        greetings.validate(config(), Templates(tmp_path), today=date(2027, 1, 1))
    assert "[campaigns.birthday] template has value 'greeting_birthday'" in str(caught.value)
    assert "nickname" in str(caught.value)


def test_templates_are_sandboxed(tmp_path: Any) -> None:
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "evil.j2").write_text("{{ name.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="SecurityError"):
        Templates(tmp_path).render("evil", "zh", {"name": "x"})


# --- where -----------------------------------------------------------------------------------


# Webhook source "shop" has a callback_url: its addresses can take a greeting.
SHOP = parse_config(
    {"webhook": {"sources": {"shop": {"secret_env": "S", "callback_url": "http://shop.test/"}}}}
)
REACH = Reach(
    frozenset({"telegram", "email", "webhook"}),
    ("telegram", "email", "webhook"),
    SHOP.unsendable,
)
TG = Reachable("telegram", "1001", True, None)
MAIL = Reachable("email", "ann@example.com", True, None)
HOOK = Reachable("webhook", "shop:ann", True, None)
PHONE = Reachable("phone", "+8613800138000", True, None)


def test_channel_choice_order() -> None:
    everything = [TG, MAIL, HOOK, PHONE]
    assert choose_channel(REACH, "email", ("webhook", "shop:ann"), everything) == (
        "email",
        "ann@example.com",
    )
    assert choose_channel(REACH, None, ("webhook", "shop:ann"), everything) == (
        "webhook",
        "shop:ann",
    )
    assert choose_channel(REACH, None, None, everything) == ("telegram", "1001")
    # preferred channel unreachable: fall back to the last one they wrote from
    blocked = Reachable("telegram", "1001", False, "bot was blocked by the user")
    assert choose_channel(REACH, "telegram", ("email", "ann@example.com"), [blocked, MAIL]) == (
        "email",
        "ann@example.com",
    )


def test_unreachable_customers_get_a_reason() -> None:
    blocked = Reachable("telegram", "1001", False, "bot was blocked by the user")
    orphan = Reachable("webhook", "other:ann", True, None)
    reason = choose_channel(REACH, None, None, [blocked, PHONE, orphan])
    assert isinstance(reason, str)
    assert "telegram 1001: unreachable (bot was blocked by the user)" in reason
    assert "phone +8613800138000: phone is not a channel kefu sends on" in reason
    assert "webhook source 'other' has no callback_url" in reason
    off = Reach(frozenset({"webhook"}), ("telegram",), SHOP.unsendable)
    assert "the email channel is off" in str(choose_channel(off, "email", None, [MAIL]))


# --- planning against the database ----------------------------------------------------------


async def test_plan_once_never_twice_and_only_with_consent(db: Database) -> None:
    p = planner()
    yes = await add_customer(db, name="yes")
    await add_customer(db, name="no", consent=False)
    await add_customer(db, name="nobday", birthday=None)
    await add_customer(db, name="other", birthday=date(1990, 1, 6))
    now = utc(2027, 1, 4)
    first = await p.plan(db, "birthday", date(2027, 1, 5), now, lead=None)
    second = await p.plan(db, "birthday", date(2027, 1, 5), now, lead=None)
    assert (first.planned, second.planned) == (1, 0)
    rows = await deliveries(db)
    assert [(d.customer_id, d.campaign, d.occasion, d.status) for d in rows] == [
        (yes, "birthday", "2027", "planned")
    ]
    async with db.sessions() as session:
        out = await session.scalar(select(OutboxRow))
        logged = await session.scalar(select(Interaction).where(Interaction.direction == "out"))
    assert out is not None and logged is not None
    assert out.id == rows[0].outbox_id and out.dedupe_key == f"greeting:birthday:2027:{yes}"
    assert out.next_attempt_at == utc(2027, 1, 5, 1) and out.payload["kind"] == "greeting"
    assert (
        out.interaction_id == logged.id
        and logged.author_kind == "bot"
        and logged.customer_id == yes
    )
    assert "生日快乐" in out.payload["text"] and "37" in out.payload["text"]


async def test_leap_day_birthdays_in_2027_and_2028(db: Database) -> None:
    leap = await add_customer(db, name="leap", birthday=date(1992, 2, 29))
    p = planner()
    now = utc(2027, 1, 1)
    assert (await p.plan(db, "birthday", date(2027, 2, 28), now, lead=None)).planned == 1
    assert (await p.plan(db, "birthday", date(2027, 3, 1), now, lead=None)).planned == 0
    assert (await p.plan(db, "birthday", date(2028, 2, 28), now, lead=None)).planned == 0
    assert (await p.plan(db, "birthday", date(2028, 2, 29), now, lead=None)).planned == 1
    assert [(d.customer_id, d.occasion) for d in await deliveries(db)] == [
        (leap, "2027"),
        (leap, "2028"),
    ]
    mar1 = planner(config(birthday={"enabled": True, "leap_day": "mar1"}))
    other = await add_customer(db, name="leap2", birthday=None, md="02-29")
    assert (await mar1.plan(db, "birthday", date(2027, 2, 28), now, lead=None)).planned == 0
    assert (await mar1.plan(db, "birthday", date(2027, 3, 1), now, lead=None)).planned == 1
    assert (await deliveries(db))[-1].customer_id == other


async def test_holiday_segments_by_tag_and_vip(db: Database) -> None:
    cfg = config(holidays={"enabled": True, "segment": {"tags": ["retail"], "vip_only": True}})
    p = planner(cfg)
    target = await add_customer(db, name="vipretail", tags=["retail"], vip=True)
    await add_customer(db, name="retail", tags=["retail"])
    await add_customer(db, name="vip", tags=["wholesale"], vip=True)
    outcome = await p.plan(db, "holiday", date(2027, 2, 6), utc(2027, 2, 1), lead=None)
    assert outcome.planned == 1
    assert [d.customer_id for d in await deliveries(db)] == [target]
    assert (await p.plan(db, "holiday", date(2027, 2, 7), utc(2027, 2, 1), lead=None)).planned == 0


async def test_unreachable_customer_is_skipped_with_the_reason_recorded(db: Database) -> None:
    p = planner(channels=("webhook",))
    cid = await add_customer(
        db, name="tg", identities=[("telegram", "42"), ("phone", "+8613800138000")]
    )
    outcome = await p.plan(db, "birthday", date(2027, 1, 5), utc(2027, 1, 4), lead=None)
    assert (outcome.planned, outcome.skipped) == (0, 1)
    (row,) = await deliveries(db)
    assert (row.customer_id, row.status, row.outbox_id) == (cid, "skipped", None)
    assert "the telegram channel is off" in (row.reason or "")
    assert await count(db, OutboxRow) == 0


async def test_channel_follows_where_the_customer_last_wrote(db: Database) -> None:
    p = planner()
    cid = await add_customer(
        db, name="mixed", identities=[("telegram", "42"), ("email", "m@example.com")]
    )
    async with db.transaction() as session:
        session.add(
            Interaction(
                customer_id=cid,
                channel="email",
                direction="in",
                author_kind="customer",
                author_id="m@example.com",
                text="hi",
            )
        )
    await p.plan(db, "birthday", date(2027, 1, 5), utc(2027, 1, 4), lead=None)
    async with db.sessions() as session:
        out = await session.scalar(select(OutboxRow))
    assert out is not None and (out.channel, out.address) == ("email", "m@example.com")


async def test_stepped_clock_serves_each_time_zone_at_its_own_hour(db: Database) -> None:
    zones = ["Pacific/Auckland", "America/Los_Angeles", "Asia/Shanghai"]
    ids = {z: await add_customer(db, name=z.split("/")[1], tz=z) for z in zones}
    clock = [utc(2027, 1, 4, 12)]
    scheduler = CampaignScheduler(db, planner(), clock=lambda: clock[0])
    planned_at: dict[int, datetime] = {}
    while clock[0] <= utc(2027, 1, 6, 12):
        await scheduler.run_once()
        for d in await deliveries(db):
            planned_at.setdefault(d.customer_id, clock[0])
        clock[0] += timedelta(minutes=15)
    rows = {d.customer_id: d for d in await deliveries(db)}
    expected = {
        "Pacific/Auckland": utc(2027, 1, 4, 20),
        "America/Los_Angeles": utc(2027, 1, 5, 17),
        "Asia/Shanghai": utc(2027, 1, 5, 1),
    }
    for zone, cid in ids.items():
        assert rows[cid].send_at == expected[zone], zone
        # planned within one planner interval (plus margin) of the send time, never a day early
        assert timedelta(0) <= expected[zone] - planned_at[cid] <= timedelta(minutes=20), zone
    assert await count(db, OutboxRow) == 3


async def test_catch_up_at_start_same_local_day_only(db: Database) -> None:
    auckland = await add_customer(db, name="nz", tz="Pacific/Auckland")
    la = await add_customer(db, name="la", tz="America/Los_Angeles")
    shanghai = await add_customer(db, name="sh", tz="Asia/Shanghai")
    # kefu was down all through the 5th in Auckland and Shanghai's morning: it starts at 12:00 UTC
    now = utc(2027, 1, 5, 12)  # Auckland 01:00 on the 6th; Shanghai 20:00; Los Angeles 04:00
    scheduler = CampaignScheduler(db, planner(), clock=lambda: now)
    await scheduler.run_once(catch_up=True)
    rows = {d.customer_id: d for d in await deliveries(db)}
    assert auckland not in rows  # its day is over: never on a later day
    assert rows[shanghai].send_at == now  # still the 5th in Shanghai: goes out now
    assert la not in rows  # Los Angeles' 09:00 has not come yet
    later = utc(2027, 1, 5, 16, 50)
    scheduler.clock = lambda: later
    await scheduler.run_once()
    rows = {d.customer_id: d for d in await deliveries(db)}
    assert rows[la].send_at == utc(2027, 1, 5, 17)


async def test_unsent_greetings_expire_when_their_day_ends(db: Database) -> None:
    cid = await add_customer(db, name="sh", tz="Asia/Shanghai")
    p = planner()
    await p.plan(db, "birthday", date(2027, 1, 5), utc(2027, 1, 5, 0, 50), lead=None)
    # kefu dies before 09:00 and comes back the next day: the greeting must not go out
    assert await p.expire(db, utc(2027, 1, 6, 2), everything=True) == 1
    async with db.sessions() as session:
        out = await session.scalar(select(OutboxRow))
    (row,) = await deliveries(db)
    assert out is not None and out.status == "dead" and "expired" in (out.last_error or "")
    assert (row.customer_id, row.status) == (cid, "expired")
    assert await p.expire(db, utc(2027, 1, 6, 3), everything=True) == 0
