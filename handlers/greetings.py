"""Birthday and holiday greetings: who is greeted on which local day, when, where and with what.

The rules, each for a reason:
- A greeting belongs to the customer's own local day (their time zone, else the configured
  default) and goes out at send_time there; once that day is over it is never sent.
- Occasion keys make it exactly once: a birthday is keyed by its year (a customer whose birthday
  is corrected, or whose 29 February rule changes, is still greeted once that year), a holiday by
  its date (two holidays on one day, or one holiday in two countries, are one greeting).
- Planning happens shortly before the send time (the planner runs every plan_interval_minutes),
  so a greeting reflects the consent, channel and template of the moment; the outbox holds it
  until send_at. Catch-up after downtime is the same rule: still the same local day, send now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_calendars

from bot.config import (
    CHANNELS,
    CampaignsConfig,
    Config,
    ConfigError,
    QuietHoursConfig,
    SegmentConfig,
)
from bot.intents import Greeting as GreetingIntent
from bot.intents import Outbound
from handlers import segments
from handlers.templating import LANGUAGES, TemplateProblem, Templates, language_of
from storage import campaigns as store
from storage import outbox
from storage.db import Database
from storage.models import Interaction, OutboxRow
from storage.rows import table_of

log = logging.getLogger("kefu.greetings")

Campaign = Literal["birthday", "holiday"]
CAMPAIGNS: tuple[Campaign, ...] = ("birthday", "holiday")
BATCH = 1000


# --- occasions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occasion:
    campaign: Campaign
    day: date  # the customer's local date of the greeting
    key: str
    template: str
    send_time: time
    segment: SegmentConfig
    names: Mapping[str, str] = field(default_factory=dict)  # holiday name per language
    month_days: tuple[str, ...] | None = None  # birthdays: the birthday_md values greeted today


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def birthday_month_days(day: date, leap_day: str) -> tuple[str, ...]:
    mds = [day.strftime("%m-%d")]
    common_year = not _is_leap(day.year)
    if common_year and (day.month, day.day) == ((2, 28) if leap_day == "feb28" else (3, 1)):
        mds.append("02-29")
    return tuple(mds)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@lru_cache(maxsize=128)
def _calendar(country: str, year: int, language: str) -> dict[date, tuple[str, ...]]:
    cal = holiday_calendars.country_holidays(country, years=year, language=language, observed=False)
    return {d: tuple(n.strip() for n in name.split(";")) for d, name in cal.items()}


def _languages(country: str) -> dict[str, str]:
    """Our language -> the `holidays` language to ask for (the package's default if unsupported)."""
    supported = holiday_calendars.country_holidays(country).supported_languages or ()
    wanted = {"zh": "zh_CN", "en": "en_US"}
    default = holiday_calendars.country_holidays(country).default_language or "en_US"
    return {ours: theirs if theirs in supported else default for ours, theirs in wanted.items()}


def holidays_on(config: CampaignsConfig, day: date) -> list[dict[str, str]]:
    """The selected holidays whose FIRST day is `day`: [{"zh": name, "en": name}], config order."""
    cfg = config.holidays
    found: list[dict[str, str]] = []
    for country in cfg.countries:
        langs = _languages(country)
        zh = _calendar(country, day.year, langs["zh"])
        en = _calendar(country, day.year, langs["en"])
        before = day - timedelta(days=1)
        zh_before = _calendar(country, before.year, langs["zh"]).get(before, ())
        for i, name_zh in enumerate(zh.get(day, ())):
            names_en = en.get(day, ())
            name_en = names_en[i] if i < len(names_en) else name_zh
            if name_zh in zh_before:
                continue  # the second day of 春节 is not a new occasion
            if cfg.holidays and name_zh not in cfg.holidays and name_en not in cfg.holidays:
                continue
            found.append({"zh": name_zh, "en": name_en})
    md = day.strftime("%m-%d")
    for custom in cfg.custom:
        if custom.date == md:
            found.append(
                {
                    "zh": custom.name,
                    "en": custom.name_en or custom.name,
                    "template": custom.template or "",
                }
            )
    if cfg.holidays:
        rank = {name: n for n, name in enumerate(cfg.holidays)}
        found.sort(key=lambda h: min(rank.get(h["zh"], 999), rank.get(h["en"], 999)))
    return found


def occasion(config: CampaignsConfig, campaign: Campaign, day: date) -> Occasion | None:
    if campaign == "birthday":
        b = config.birthday
        return Occasion(
            "birthday",
            day,
            str(day.year),
            b.template,
            _hhmm(b.send_time),
            b.segment,
            month_days=birthday_month_days(day, b.leap_day),
        )
    found = holidays_on(config, day)
    if not found:
        return None
    first = found[0]
    h = config.holidays
    template = first.get("template") or h.templates.get(first["zh"]) or h.templates.get(first["en"])
    return Occasion(
        "holiday",
        day,
        day.isoformat(),
        template or h.template,
        _hhmm(h.send_time),
        h.segment,
        names={"zh": first["zh"], "en": first["en"]},
    )


# --- when ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    kind: Literal["send", "wait", "late", "skip"]
    send_at: datetime | None = None  # UTC
    expires_at: datetime | None = None  # UTC end of the local day
    reason: str | None = None


def _in_quiet(t: time, start: time, end: time) -> bool:
    if start <= end:
        return start <= t < end
    return t >= start or t < end  # the window wraps midnight (21:00-08:00)


def timing(
    day: date,
    zone: ZoneInfo,
    send_time: time,
    now: datetime,
    quiet: QuietHoursConfig,
    *,
    lead: timedelta | None,
) -> Timing:
    """When the greeting for local `day` goes out. lead=None: plan it whatever the hour (preview,
    `campaigns run`); else only once send_at - lead has come (the scheduler)."""
    end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    if now >= end:
        return Timing("late", reason=f"the day {day} is over in {zone.key}")
    at = datetime.combine(day, send_time, zone).astimezone(UTC)
    at = max(at, now)  # catch-up: kefu was down at send time, and it is still the same day
    if quiet.enabled:
        local = at.astimezone(zone)
        start, stop = _hhmm(quiet.start), _hhmm(quiet.end)
        if _in_quiet(local.time().replace(tzinfo=None), start, stop):
            if local.time().replace(tzinfo=None) < stop:
                at = datetime.combine(local.date(), stop, zone).astimezone(UTC)
            else:
                return Timing(
                    "skip",
                    expires_at=end,
                    reason=(
                        f"quiet hours {quiet.start}-{quiet.end} in {zone.key} until the day ends"
                    ),
                )
    if at >= end:
        return Timing("late", reason=f"the day {day} is over in {zone.key}")
    if lead is not None and at - lead > now:
        return Timing("wait", at, end)
    return Timing("send", at, end)


# --- where -----------------------------------------------------------------------------------


def _anywhere(channel: str, address: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Reach:
    """The channels this kefu can send on, in the configured order, and `refuse`: why an address
    on one of them cannot take a message (None: it can)."""

    channels: frozenset[str]
    order: tuple[str, ...]
    refuse: Callable[[str, str], str | None] = _anywhere

    @classmethod
    def of(cls, config: Config, channels: Iterable[str] | None = None) -> Reach:
        """The reach of a configuration: the channels given (those running), else those it turns
        on."""
        on = config.channels_on() if channels is None else channels
        return cls(
            frozenset(c for c in on if c in CHANNELS),
            tuple(config.campaigns.channel_order),
            config.unsendable,
        )

    def why_not(self, identity: store.Reachable) -> str | None:
        if identity.channel not in CHANNELS:
            return f"{identity.channel} is not a channel kefu sends on"
        if identity.channel not in self.channels:
            return f"the {identity.channel} channel is off"
        if not identity.reachable:
            return f"unreachable ({identity.reason or 'no reason given'})"
        return self.refuse(identity.channel, identity.address)


def choose_channel(
    reach: Reach,
    preferred: str | None,
    last: tuple[str, str] | None,
    identities: Sequence[store.Reachable],
) -> tuple[str, str] | str:
    """(channel, address): the preferred channel, else where they last wrote from, else the
    configured order. A string is the reason nobody can be reached."""
    usable = [i for i in identities if reach.why_not(i) is None]

    def on(channel: str) -> store.Reachable | None:
        mine = [i for i in usable if i.channel == channel]
        # On the channel they last wrote from, the very address they wrote from.
        exact = [i for i in mine if last is not None and (i.channel, i.address) == last]
        found = exact or mine
        return found[0] if found else None

    for channel in (preferred, last[0] if last else None, *reach.order):
        if channel is not None and (hit := on(channel)) is not None:
            return hit.channel, hit.address
    if not identities:
        return "no identity to send to"
    return "no reachable channel: " + "; ".join(
        f"{i.channel} {i.address}: {reach.why_not(i)}" for i in identities
    )


# --- what ------------------------------------------------------------------------------------


SAMPLE = store.Candidate(
    id=0,
    display_name="王小明",
    birthday=date(1990, 1, 5),
    birthday_md="01-05",
    timezone="Asia/Shanghai",
    language="zh",
    tags=("vip",),
    vip=True,
    preferred_channel=None,
)


def context(c: store.Candidate, occ: Occasion, language: str, business: str) -> dict[str, Any]:
    age = occ.day.year - c.birthday.year if occ.campaign == "birthday" and c.birthday else None
    return {
        "name": c.display_name,
        "customer": {
            "id": c.id,
            "name": c.display_name,
            "language": c.language,
            "timezone": c.timezone,
            "tags": list(c.tags),
            "vip": c.vip,
            "birthday": c.birthday,
        },
        "age": age,
        "holiday": occ.names.get(language) or occ.names.get("zh") or "",
        "date": occ.day,
        "occasion": occ.key,
        "business": business,
    }


def template_names(config: CampaignsConfig) -> dict[str, str]:
    """Every template a campaign may use -> the config key that names it."""
    names = {
        config.birthday.template: "[campaigns.birthday] template",
        config.holidays.template: "[campaigns.holidays] template",
    }
    for holiday, name in config.holidays.templates.items():
        names[name] = f"[campaigns.holidays.templates] {holiday}"
    for n, custom in enumerate(config.holidays.custom):
        if custom.template:
            names[custom.template] = f"[campaigns.holidays.custom.{n}] template"
    return names


def validate(config: Config, templates: Templates, today: date | None = None) -> None:
    """At start: every template renders in zh and en with a sample customer, every configured
    holiday exists, every channel name is known. Raises ConfigError naming the key and value."""
    cfg = config.campaigns
    for channel in cfg.channel_order:
        if channel not in CHANNELS:
            raise ConfigError(
                f"[campaigns] channel_order has value {channel!r}: use {', '.join(CHANNELS)}"
            )
    birthday = Occasion("birthday", date(2027, 1, 5), "2027", "", time(9), cfg.birthday.segment)
    holiday = Occasion(
        "holiday", date(2027, 2, 6), "2027-02-06", "", time(9), cfg.holidays.segment,
        names={"zh": "春节", "en": "Chinese New Year"},
    )
    for name, key in template_names(cfg).items():
        occ = birthday if key.startswith("[campaigns.birthday]") else holiday
        for lang in LANGUAGES:
            try:
                templates.check(name, context(SAMPLE, occ, lang, cfg.business_name))
            except TemplateProblem as exc:
                raise ConfigError(f"{key} has value {name!r}: {exc}") from None
    try:
        templates.check("optout_confirm", {"business": cfg.business_name})
    except TemplateProblem as exc:
        raise ConfigError(f"opt-out confirmation template: {exc}") from None
    year = (today or date.today()).year
    known: dict[str, set[str]] = {}
    for country in cfg.holidays.countries:
        try:
            langs = _languages(country)
        except NotImplementedError:
            raise ConfigError(
                f"[campaigns.holidays] countries has value {country!r}: not a country the "
                "holidays package knows (ISO 3166 codes such as CN, US, DE)"
            ) from None
        for y in (year, year + 1):
            for lang in set(langs.values()):
                for names in _calendar(country, y, lang).values():
                    known.setdefault(country, set()).update(names)
    every = set().union(*known.values()) if known else set()
    for wanted in cfg.holidays.holidays:
        if wanted not in every:
            sample = sorted(n for n in every if "(" not in n and "（" not in n)[:12]
            raise ConfigError(
                f"[campaigns.holidays] holidays has value {wanted!r}: not a holiday of "
                f"{', '.join(cfg.holidays.countries)} in {year}-{year + 1}; "
                f"known: {', '.join(sample)}"
            )


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    campaign: str
    occasion: str
    customer_id: int
    name: str | None
    language: str
    channel: str | None
    address: str | None
    send_at: datetime | None
    expires_at: datetime | None
    text: str | None
    skip: str | None = None  # why this customer gets no greeting (a skipped delivery row)

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "name": self.name,
            "channel": self.channel,
            "address": self.address,
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "occasion": f"{self.campaign}:{self.occasion}",
            "text": self.text,
            **({"skipped": self.skip} if self.skip else {}),
        }


@dataclass
class Outcome:
    planned: int = 0
    skipped: int = 0
    already: int = 0  # another planner (or an earlier run) had claimed them
    late: int = 0
    waiting: int = 0

    def add(self, other: Outcome) -> None:
        for f in ("planned", "skipped", "already", "late", "waiting"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


Progress = Callable[[int], None]


class Planner:
    def __init__(self, config: Config, templates: Templates, reach: Reach) -> None:
        self.config = config
        self.cfg = config.campaigns
        self.templates = templates
        self.reach = reach
        self.default_zone = ZoneInfo(self.cfg.default_timezone)
        self._zones: dict[str | None, ZoneInfo] = {None: self.default_zone}

    def enabled(self) -> list[Campaign]:
        return [
            c
            for c in CAMPAIGNS
            if (self.cfg.birthday if c == "birthday" else self.cfg.holidays).enabled
        ]

    def zone(self, name: str | None) -> ZoneInfo:
        if name not in self._zones:
            try:
                self._zones[name] = ZoneInfo(name or "")
            except (ZoneInfoNotFoundError, ValueError):
                log.warning(
                    "campaigns.timezone.invalid timezone=%r using=%s", name, self.default_zone.key
                )
                self._zones[name] = self.default_zone
        return self._zones[name]

    async def greetings(
        self,
        db: Database,
        occ: Occasion,
        now: datetime,
        *,
        lead: timedelta | None,
        after_id: int = 0,
        limit: int = BATCH,
    ) -> tuple[list[Greeting], int, Outcome]:
        """One page of candidates turned into greetings (or skips); returns the last id seen."""
        outcome = Outcome()
        async with db.sessions() as session:
            page = await store.candidates(
                session,
                campaign=occ.campaign,
                occasion=occ.key,
                month_days=occ.month_days,
                vip_only=occ.segment.vip_only,
                after_id=after_id,
                limit=limit,
            )
            if not page:
                return [], after_id, outcome
            wanted = set(occ.segment.tags)
            named = occ.segment.segment
            inside = (
                await segments.members_in(
                    session, self.config, named, now, among=[c.id for c in page]
                )
                if named
                else None
            )
            due: list[tuple[store.Candidate, Timing]] = []
            for c in page:
                if wanted and not wanted.intersection(c.tags):
                    continue
                if inside is not None and c.id not in inside:
                    continue
                t = timing(
                    occ.day,
                    self.zone(c.timezone),
                    occ.send_time,
                    now,
                    self.cfg.quiet_hours,
                    lead=lead,
                )
                if t.kind == "late":
                    outcome.late += 1
                elif t.kind == "wait":
                    outcome.waiting += 1
                else:
                    due.append((c, t))
            ids = [c.id for c, _ in due]
            reach = await store.identities(session, ids) if ids else {}
            last = await store.last_inbound(session, ids) if ids else {}
        out: list[Greeting] = []
        for c, t in due:
            lang = language_of(c.language, self.cfg.default_language)
            if t.kind == "skip":
                out.append(self._skip(occ, c, lang, t, t.reason or "skipped"))
                continue
            where = choose_channel(
                self.reach, c.preferred_channel, last.get(c.id), reach.get(c.id, [])
            )
            if isinstance(where, str):
                out.append(self._skip(occ, c, lang, t, where))
                continue
            text = self.templates.render(
                occ.template, lang, context(c, occ, lang, self.cfg.business_name)
            )
            out.append(
                Greeting(occ.campaign, occ.key, c.id, c.display_name, lang, where[0], where[1],
                         t.send_at, t.expires_at, text)
            )
        return out, page[-1].id, outcome

    def _skip(
        self, occ: Occasion, c: store.Candidate, lang: str, t: Timing, reason: str
    ) -> Greeting:
        log.info(
            "campaigns.plan.skipped campaign=%s occasion=%s customer=%s reason=%s",
            occ.campaign, occ.key, c.id, reason,
        )
        # The text is rendered all the same: a preview shows what a greeting will say before
        # its channel is set up (sending never uses a skipped greeting's text).
        text = self.templates.render(
            occ.template, lang, context(c, occ, lang, self.cfg.business_name)
        )
        return Greeting(occ.campaign, occ.key, c.id, c.display_name, lang, None, None,
                        t.send_at, t.expires_at, text, reason)

    async def preview(
        self, db: Database, campaign: Campaign, day: date, now: datetime
    ) -> list[Greeting]:
        """What plan() would do for the whole day, whatever the hour; writes nothing."""
        occ = occasion(self.cfg, campaign, day)
        if occ is None:
            return []
        found: list[Greeting] = []
        after = 0
        while True:
            page, last_id, _ = await self.greetings(db, occ, now, lead=None, after_id=after)
            found.extend(page)
            if last_id == after:
                return found
            after = last_id

    async def plan(
        self,
        db: Database,
        campaign: Campaign,
        day: date,
        now: datetime,
        *,
        lead: timedelta | None,
        on_progress: Progress | None = None,
    ) -> Outcome:
        """Claims and enqueues every due greeting of the day, a page per transaction."""
        total = Outcome()
        occ = occasion(self.cfg, campaign, day)
        if occ is None:
            return total
        after = 0
        while True:
            page, last_id, outcome = await self.greetings(db, occ, now, lead=lead, after_id=after)
            total.add(outcome)
            if last_id == after:
                break
            after = last_id
            if page:
                total.add(await self.commit(db, page, now))
            if on_progress is not None:
                on_progress(total.planned + total.skipped + total.already)
        if total.planned or total.skipped:
            log.info(
                "campaigns.plan.done campaign=%s occasion=%s planned=%d skipped=%d already=%d "
                "late=%d",
                campaign,
                occ.key,
                total.planned,
                total.skipped,
                total.already,
                total.late,
            )
        return total

    async def commit(self, db: Database, page: Sequence[Greeting], now: datetime) -> Outcome:
        """One transaction: the delivery rows (the claim), then for the claimed ones the log
        entry and the outbox row; a crash anywhere leaves all of it or none."""
        outcome = Outcome()
        async with db.transaction() as session:
            claimed = await store.claim(
                session,
                [
                    {
                        "campaign": g.campaign,
                        "occasion": g.occasion,
                        "customer_id": g.customer_id,
                        "status": "skipped" if g.skip else "planned",
                        "reason": g.skip,
                        "channel": g.channel,
                        "send_at": g.send_at,
                        "expires_at": g.expires_at,
                        "created_at": now,
                    }
                    for g in page
                ],
            )
            sending = [g for g in page if g.customer_id in claimed and not g.skip]
            outcome.already = len(page) - len(claimed)
            outcome.skipped = sum(1 for g in page if g.customer_id in claimed and g.skip)
            # Ids first, then one executemany per table (the slow alternative is a RETURNING
            # round trip per greeting). The outbox rows are storage.outbox.row's, as enqueue's
            # are; a dedupe-key clash cannot happen once the delivery row was claimed.
            log_ids = await store.reserve_ids(session, table_of(Interaction), len(sending))
            out_ids = await store.reserve_ids(session, table_of(OutboxRow), len(sending))
            logged: list[dict[str, Any]] = []
            queued: list[dict[str, Any]] = []
            links: list[tuple[int, int]] = []
            for g, log_id, out_id in zip(sending, log_ids, out_ids, strict=True):
                assert g.channel and g.address and g.text is not None and g.send_at is not None
                logged.append(
                    {
                        "id": log_id,
                        "customer_id": g.customer_id,
                        "channel": g.channel,
                        "direction": "out",
                        "author_kind": "bot",
                        "author_id": f"campaign:{g.campaign}",
                        "text": g.text,
                        "attachments": [],
                        "meta": {"kind": "greeting", "campaign": g.campaign, "occasion": g.occasion,
                                 "send_at": g.send_at.isoformat()},
                        "created_at": now,
                    }
                )
                message = Outbound(
                    g.channel,
                    g.address,
                    GreetingIntent(
                        text=g.text,
                        customer_id=g.customer_id,
                        # the customer's language: a channel's own wording around the greeting
                        # (the email footer) follows it, not the script of the customer's name
                        language=g.language,
                        campaign=g.campaign,
                        occasion=g.occasion,
                    ),
                    f"greeting:{g.campaign}:{g.occasion}:{g.customer_id}",
                )
                queued.append(
                    {
                        "id": out_id,
                        **outbox.row(
                            message, next_attempt_at=g.send_at, interaction_id=log_id,
                            created_at=now,
                        ),
                    }
                )
                links.append((claimed[g.customer_id], out_id))
            await store.insert_many(session, table_of(Interaction), logged)
            await store.insert_many(session, table_of(OutboxRow), queued)
            await store.link_outbox(session, links)
            outcome.planned = len(sending)
        return outcome

    async def tick(self, db: Database, now: datetime) -> Outcome:
        """The scheduler's run: every enabled campaign, for every local date somewhere on Earth
        right now (UTC-12 to UTC+14 spans yesterday, today and tomorrow in UTC)."""
        total = Outcome()
        lead = timedelta(minutes=self.cfg.plan_interval_minutes + 5)
        today = now.astimezone(UTC).date()
        for campaign in self.enabled():
            for day in (today - timedelta(days=1), today, today + timedelta(days=1)):
                total.add(await self.plan(db, campaign, day, now, lead=lead))
        return total

    async def expire(self, db: Database, now: datetime, *, everything: bool = False) -> int:
        """Unsent greetings whose day ends before the next tick are dropped: never a day late."""
        margin = now + timedelta(minutes=self.cfg.plan_interval_minutes)
        since = None if everything else now - timedelta(days=2)
        async with db.transaction() as session:
            n = await store.expire(session, now, margin_until=margin, since=since)
        if n:
            log.warning(
                "campaigns.expired count=%d: their local day ended before they were sent", n
            )
        return n
