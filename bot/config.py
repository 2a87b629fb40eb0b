"""config.toml, validated at start. Secrets never live in the file: it names environment
variables."""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class ConfigError(Exception):
    """A config problem a person can fix; the message names the key and the bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Section):
    url: str = "sqlite+aiosqlite:///kefu.db"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        try:
            url = make_url(v)
            port = url.port
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"not a database URL ({exc})") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port {port} is not between 1 and 65535")
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError("name the database file: sqlite+aiosqlite:///PATH")
        if url.get_backend_name() == "postgresql" and not url.database:
            raise ValueError("name the database: postgresql+asyncpg://USER@HOST/DB")
        return v


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024, gt=0)


class TelegramConfig(Section):
    enabled: bool = False
    token_env: str = "KEFU_TELEGRAM_TOKEN"
    # A self-hosted Bot API server, e.g. "http://127.0.0.1:8081/bot" (the token is appended).
    base_url: str | None = None
    staff_chat_id: int | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret_env: str = "KEFU_TELEGRAM_WEBHOOK_SECRET"
    # Public https URL of kefu's /telegram/webhook; when set, kefu registers it with setWebhook.
    webhook_url: str | None = None
    # For `kefu customers link-telegram` deep links (t.me/<bot_username>?start=...), without "@".
    bot_username: str | None = None
    poll_timeout_seconds: int = Field(30, ge=0, le=50)
    # Telegram's flood limits: about 30 messages a second overall and 20 a minute into one group.
    messages_per_second: float = Field(30.0, gt=0)
    group_messages_per_minute: float = Field(20.0, gt=0)
    link_ttl_days: int = Field(30, ge=1)

    @field_validator("base_url", "webhook_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("bot_username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.removeprefix("@")
        if not v.replace("_", "").isalnum() or not 5 <= len(v) <= 32:
            raise ValueError("must be the bot's username: 5-32 letters, digits or '_'")
        return v


class EmailConfig(Section):
    enabled: bool = False
    address: str | None = None
    username: str | None = None
    password_env: str = "KEFU_EMAIL_PASSWORD"
    imap_host: str | None = None
    imap_port: int = 993
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    folder: str = "INBOX"
    smtp_host: str | None = None
    smtp_port: int = 465
    smtp_security: Literal["tls", "starttls", "none"] = "tls"
    # SMTP login when it differs from `username` (same password variable); "" for a relay that
    # needs no login (a local Postfix, an internal relay): kefu then sends no AUTH.
    smtp_username: str | None = None
    # Shown as the From name of answers and in their footer.
    from_name: str = Field("Customer Service", min_length=1, max_length=100)
    # Processed mail is moved here (created if missing); unset: it stays in `folder`, flagged \Seen.
    processed_folder: str | None = None
    # Without IMAP IDLE the folder is polled this often; under IDLE it is re-checked this often.
    poll_interval_seconds: float = Field(30.0, gt=0)
    idle_recheck_seconds: float = Field(300.0, gt=0, le=1740)
    # Raw messages (<sha256>.eml) and attachments are kept here.
    store_dir: str = "data/mail"
    max_attachment_bytes: int = Field(25 * 1024 * 1024, ge=0)
    # A private CA for servers with their own certificates (PEM file); default: the system's.
    ca_file: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    # Mail the server received longer ago than this is logged but never acknowledged automatically.
    acknowledge_max_age_days: float = Field(2.0, gt=0)
    # Identity-bearing actions by mail (opt-out, survey answers) need the sender's domain
    # authenticated: Authentication-Results from these authserv-ids (your MX's), or a DKIM
    # signature kefu verifies itself (dkim_verify; a DNS lookup for short messages only).
    authserv_id: list[str] = Field(default_factory=list)
    dkim_verify: bool = True

    @field_validator("authserv_id", mode="before")
    @classmethod
    def _ids(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class WebhookSourceConfig(Section):
    secret_env: str
    callback_url: str | None = None
    # "kefu" (X-Kefu-Signature) or "standard" (Standard Webhooks 1.0, whsec_ secrets).
    signing: Literal["kefu", "standard"] = "kefu"
    # Rotation: the old secret's variable, accepted alongside secret_env until removed.
    previous_secret_env: str | None = None

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class WebhookConfig(Section):
    max_skew_seconds: int = Field(300, gt=0)
    sources: dict[str, WebhookSourceConfig] = Field(default_factory=dict)


class OutboxConfig(Section):
    max_attempts: int = Field(10, ge=1)
    base_delay_seconds: float = Field(2.0, gt=0)
    max_delay_seconds: float = Field(3600.0, gt=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    batch_size: int = Field(100, ge=1)
    lease_seconds: float = Field(120.0, gt=0)
    # Sent rows older than this many days are deleted (hourly, in small batches); 0 keeps them all.
    keep_sent_days: int = Field(90, ge=0)


class PipelineConfig(Section):
    # Messages waiting for the database writer; when it is full a sender waits up to
    # queue_wait_seconds for room, then is told to retry (webhook: 503 with Retry-After).
    max_queue: int = Field(1000, ge=1)
    queue_wait_seconds: float = Field(2.0, ge=0)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# --- campaigns and customers (issue #6) ---------------------------------------------------------

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_MMDD = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


def _hhmm(v: str) -> str:
    if not _HHMM.match(v):
        raise ValueError("use 24-hour HH:MM, e.g. 09:00")
    return v


def _zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone, e.g. Asia/Shanghai") from None
    return v


class SegmentConfig(Section):
    # Empty tags: everyone with consent; else customers carrying at least one of these tags.
    tags: list[str] = Field(default_factory=list)
    vip_only: bool = False
    # Only members of this [insight.segments] segment.
    segment: str | None = None


class QuietHoursConfig(Section):
    # In the customer's own time zone. A greeting due inside them waits for `end` on the same day,
    # or is dropped when the next allowed time is tomorrow (never on a later day).
    enabled: bool = True
    start: str = "21:00"
    end: str = "08:00"

    _times = field_validator("start", "end")(classmethod(lambda cls, v: _hhmm(v)))


class BirthdayCampaignConfig(Section):
    enabled: bool = False
    send_time: str = "09:00"
    # Born on 29 February: greeted on 28 February in common years, or on 1 March.
    leap_day: Literal["feb28", "mar1"] = "feb28"
    template: str = "greeting_birthday"
    segment: SegmentConfig = SegmentConfig()

    _send_time = field_validator("send_time")(classmethod(lambda cls, v: _hhmm(v)))


class CustomHolidayConfig(Section):
    date: str
    name: str = Field(min_length=1, max_length=64)
    # The name in English for customers whose language is en (default: `name`).
    name_en: str | None = None
    template: str | None = None

    @field_validator("date")
    @classmethod
    def _md(cls, v: str) -> str:
        if not _MMDD.match(v):
            raise ValueError("use MM-DD, e.g. 11-11")
        return v


class HolidayCampaignConfig(Section):
    enabled: bool = False
    countries: list[str] = Field(default_factory=lambda: ["CN"])
    # Names as the `holidays` package gives them, in zh_CN or en_US; empty: every public holiday.
    # Each is greeted on its first day; observed and swapped days never.
    holidays: list[str] = Field(default_factory=lambda: ["春节", "中秋节"])
    custom: list[CustomHolidayConfig] = Field(default_factory=list)
    send_time: str = "09:00"
    # Holiday name (zh or en) -> template; unnamed holidays use `template`.
    templates: dict[str, str] = Field(
        default_factory=lambda: {
            "春节": "greeting_spring_festival",
            "中秋节": "greeting_mid_autumn",
        }
    )
    template: str = "greeting_holiday"
    segment: SegmentConfig = SegmentConfig()

    _send_time = field_validator("send_time")(classmethod(lambda cls, v: _hhmm(v)))

    @field_validator("countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        return [c.strip().upper() for c in v]


class FollowUpConfig(Section):
    # 回访: a service message some time after a complaint was resolved (or a low survey score),
    # asking whether the problem is really solved; the answer lands in the same conversation.
    enabled: bool = True
    after: Duration = timedelta(days=3)
    # Also after a survey answered 1 or 2, this long after the answer (one follow-up per
    # resolution).
    low_csat: bool = True
    low_csat_after: Duration = timedelta(days=1)
    # "service": everyone except customers who opted out (退订); "marketing": only customers with
    # marketing consent, like greetings.
    consent: Literal["service", "marketing"] = "service"
    template: str = "followup_care"
    # A follow-up that could not go out within this long of its due time is dropped, not sent late.
    give_up_after: Duration = timedelta(days=2)
    # Only customers of this [insight.segments] segment (checked when the follow-up is due).
    segment: str | None = None


class CampaignsConfig(Section):
    birthday: BirthdayCampaignConfig = BirthdayCampaignConfig()
    holidays: HolidayCampaignConfig = HolidayCampaignConfig()
    followup: FollowUpConfig = Field(default_factory=FollowUpConfig)
    quiet_hours: QuietHoursConfig = QuietHoursConfig()
    # When a customer has no preferred channel and has never written: the first reachable of these.
    channel_order: list[str] = Field(default_factory=lambda: ["telegram", "email", "webhook"])
    # For customers without a time zone or language of their own.
    default_timezone: str = "Asia/Shanghai"
    default_language: str = "zh"
    # The planner wakes this often; greetings are planned this long before they are due.
    plan_interval_minutes: int = Field(15, ge=1, le=60)
    # Signs the greetings ({{ business }} in templates).
    business_name: str = Field("kefu", min_length=1, max_length=100)
    # Templates here override the built-in ones (same <lang>/<name>.j2 layout).
    template_dir: str | None = None
    # Extra whole-message opt-out words, on top of 退订, TD, unsubscribe, stop.
    opt_out_words: list[str] = Field(default_factory=list)

    _tz = field_validator("default_timezone")(classmethod(lambda cls, v: _zone(v)))


class CustomersConfig(Section):
    # Phone numbers without +country code are read as numbers of this region (ISO 3166 code).
    default_region: str = "CN"
    # 05.01.1990 and 05/01/1990 are 5 January (true) or 1 May (false).
    day_first: bool = True

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.strip().upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("not a phone region phonenumbers knows, e.g. CN, US, DE")
        return v


class ComplaintsConfig(Section):
    # "builtin", or "package.module:function" taking (text, language) and returning a Verdict.
    backend: str = "builtin"
    # More cue files in the format of handlers/data/complaint_cues.*.toml (builtin backend only).
    extra_cues: tuple[str, ...] = ()
    threshold: float = Field(default=0.5, gt=0, le=1)


# --- complaints: routing, SLA, lifecycle, survey (issue #5) ------------------------------------

PRIORITIES = ("low", "normal", "high", "urgent")  # lowest first
PRIORITY_RANK = {p: n for n, p in enumerate(PRIORITIES)}
Priority = Literal["low", "normal", "high", "urgent"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-(([01]\d|2[0-3]):[0-5]\d|24:00)$")


def parse_duration(value: object) -> timedelta:
    """'90s', '30m', '4h', '7d', '2w', '1h30m' (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))
    raise ValueError("use a duration like 30m, 4h, 7d or 1h30m")


def parse_hours(value: str) -> tuple[tuple[int, int], ...]:
    """'09:00-18:00' or '09:00-12:00,13:00-18:00' -> ((540, 1080), ...) in minutes;
    'closed' -> (). A span that ends before it starts runs past midnight: '22:00-06:00' is a
    night shift, (1320, 1800), ending at 06:00 the next day."""
    text = value.strip().lower()
    if text in ("", "closed"):
        return ()
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        found = _RANGE.match(part.strip())
        if found is None:
            raise ValueError(
                "use HH:MM-HH:MM, several joined by ',' (e.g. 09:00-12:00,13:00-18:00), or closed"
            )
        start_s, end_s = part.strip().split("-")
        start = int(start_s[:2]) * 60 + int(start_s[3:])
        end = int(end_s[:2]) * 60 + int(end_s[3:])
        if end == start:
            raise ValueError(f"{part.strip()!r} is empty: leave the day out, or write closed")
        if end < start:
            end += 24 * 60  # ends the next morning
        spans.append((start, end))
    spans.sort()
    for (_, ends), (starts, _) in itertools.pairwise(spans):
        if starts < ends:
            raise ValueError(f"{value.strip()!r}: its spans overlap")
    return tuple(spans)


def parse_day(text: str) -> tuple[int | None, int, int]:
    """'2027-02-10' -> (2027, 2, 10); '12-31' -> (None, 12, 31), a day of every year."""
    parts = text.strip().split("-")
    if len(parts) == 3 and len(parts[0]) == 4:
        found = date(int(parts[0]), int(parts[1]), int(parts[2]))
        return found.year, found.month, found.day
    if len(parts) == 2:
        date(2000, int(parts[0]), int(parts[1]))  # a leap year: 02-29 is a day
        return None, int(parts[0]), int(parts[1])
    raise ValueError(text)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class TeamConfig(Section):
    name: str = Field(min_length=1, max_length=64)
    # Staff names (`kefu staff add --name`); empty: every active staff member.
    members: list[str] = Field(default_factory=list)
    # Staff names escalations are addressed to; empty: the team's staff with role lead or admin.
    leads: list[str] = Field(default_factory=list)
    timezone: str = "Asia/Shanghai"
    # mon..sun -> "09:00-18:00" (several spans joined by ","); a day left out is closed.
    # No hours at all: open around the clock.
    hours: dict[str, str] = Field(default_factory=dict)
    # Public holidays of this country (`holidays` package, e.g. "CN") are closed days; its make-up
    # working days (调休 weekends) are open, on the hours of the team's first working weekday.
    holidays: str | None = None
    # More closed days of the team's own: "2027-02-10" once, or "12-31" every year.
    closed_dates: list[str] = Field(default_factory=list)
    # More working days ("2027-02-20"), open on the hours of the team's first working weekday.
    open_dates: list[date] = Field(default_factory=list)

    _tz = field_validator("timezone")(classmethod(lambda cls, v: _zone(v)))

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, str]) -> dict[str, str]:
        for day, spans in v.items():
            if day not in WEEKDAYS:
                raise ValueError(f"{day!r} is not a day: use {', '.join(WEEKDAYS)}")
            try:
                parse_hours(spans)
            except ValueError as exc:
                raise ValueError(f"{day} = {spans!r}: {exc}") from None
        if v and not any(parse_hours(s) for s in v.values()):
            raise ValueError("every day is closed; leave hours out for around the clock")
        # A night shift ends the next morning: the next day's first span starts after it.
        for n, day in enumerate(WEEKDAYS):
            shifts, following = parse_hours(v.get(day, "closed")), WEEKDAYS[(n + 1) % 7]
            later = parse_hours(v.get(following, "closed"))
            if shifts and later and shifts[-1][1] - 24 * 60 > later[0][0]:
                raise ValueError(
                    f"{day}'s shift past midnight and {following}'s first span overlap"
                )
        return v

    @field_validator("closed_dates")
    @classmethod
    def _closed_dates(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                parse_day(text)
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a day: use YYYY-MM-DD, or MM-DD for every year"
                ) from None
        return v

    @field_validator("holidays")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import holidays

        v = v.strip().upper()
        if v not in holidays.list_supported_countries():
            raise ValueError("not a country the holidays package knows, e.g. CN, US, DE")
        return v


class RuleConfig(Section):
    # Conditions: all given ones must hold. Lists match any of their values.
    channel: list[str] | None = None
    language: list[str] | None = None
    tags: list[str] | None = None
    vip: bool | None = None
    complaint: bool | None = None
    severity: Literal["normal", "high"] | None = None
    # A customer segment named in [insight.segments].
    segment: str | None = None
    # Outcome.
    team: str | None = None
    priority: Priority | None = None

    @field_validator("channel", "language", "tags", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class RoutingConfig(Section):
    # Empty: one team, "support", of every active staff member, open around the clock.
    teams: list[TeamConfig] = Field(default_factory=list)
    # First match wins; no match: the default team and priority (complaint high, severe urgent).
    rules: list[RuleConfig] = Field(default_factory=list)
    default_team: str | None = None
    # round_robin: the on-duty member assigned least recently; least_open: fewest open
    # conversations.
    assignment: Literal["round_robin", "least_open", "none"] = "round_robin"
    # Acknowledge new complaints, and messages outside business hours, at most this often per
    # conversation and per address.
    acknowledge_complaints: bool = True
    acknowledge_outside_hours: bool = True
    acknowledge_every: Duration = timedelta(hours=1)
    # Signs acknowledgements and surveys ({{ business }} in templates).
    business_name: str = Field("kefu", min_length=1, max_length=100)


def _targets(urgent: str, high: str, normal: str, low: str) -> dict[Priority, timedelta]:
    return {
        "urgent": parse_duration(urgent),
        "high": parse_duration(high),
        "normal": parse_duration(normal),
        "low": parse_duration(low),
    }


class SlaConfig(Section):
    # Targets count the team's business hours only ([[routing.teams]] hours, holidays,
    # closed_dates).
    # Per priority (urgent, high, normal, low); a priority left out has no target.
    first_response: dict[Priority, Duration] = Field(
        default_factory=lambda: _targets("1h", "4h", "24h", "72h")
    )
    resolution: dict[Priority, Duration] = Field(
        default_factory=lambda: _targets("8h", "24h", "72h", "7d")
    )
    check_every: Duration = timedelta(minutes=1)
    # Stop both clocks while a conversation is pending on the customer; their answer restarts them.
    pause_while_pending: bool = False


class LifecycleConfig(Section):
    # Resolved conversations with no activity for this long are closed (a new message then starts
    # a new conversation).
    auto_close_after: Duration = timedelta(days=7)


class SurveyConfig(Section):
    enabled: bool = True
    ask_after: Duration = timedelta(0)
    # Answers later than this after the survey went out are not recorded.
    expires_after: Duration = timedelta(days=7)


# --- customer insight: health score, segments, follow-up care (issue #14) ---------------------


class InsightWeights(Section):
    # Points each signal adds to a customer's churn-risk score (0-100, capped); 0 turns it off.
    open_complaint: float = Field(20, ge=0, le=100)  # each unresolved complaint, at most 2
    repeat_complaint: float = Field(
        10, ge=0, le=100
    )  # each complaint after the first in `window`, at most 3
    high_severity: float = Field(
        30, ge=0, le=100
    )  # 12315, chargeback, lawyer, media, safety, lost money
    low_csat: float = Field(25, ge=0, le=100)  # a 1/5 in `window`; a 2/5 counts half
    sla_breach: float = Field(10, ge=0, le=100)  # each breach on their conversations, at most 3
    rising_contact: float = Field(10, ge=0, le=100)
    silence_after_bad: float = Field(20, ge=0, le=100)
    unreachable: float = Field(10, ge=0, le=100)  # every address unreachable; some: half
    opted_out: float = Field(10, ge=0, le=100)


class CustomerSegmentConfig(Section):
    # A named group of customers; every condition given must hold. Lists match any of their values.
    tags: list[str] | None = None
    vip: bool | None = None
    language: list[str] | None = None
    # Has an address on one of these channels.
    channel: list[str] | None = None
    # new: first seen within `days` (default 30); active: wrote within `days` (30); silent: has not
    # written for `days` (30), or never; lapsed: wrote once, but not for `days` (180).
    activity: Literal["new", "active", "silent", "lapsed"] | None = None
    days: int | None = Field(None, ge=1)
    band: list[Literal["ok", "watch", "at_risk"]] | None = None
    # Imported fields (kefu customers import).
    marketing_consent: bool | None = None
    timezone: list[str] | None = None
    has_birthday: bool | None = None

    @field_validator("tags", "language", "channel", "band", "timezone", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class InsightConfig(Section):
    enabled: bool = True
    # [insight.segments.NAME]: for `kefu segments`, `kefu customers at-risk --segment`, the
    # report's at-risk chart, [[routing.rules]] segment and [campaigns.*.segment] segment.
    segments: dict[str, CustomerSegmentConfig] = Field(default_factory=dict)
    weights: InsightWeights = InsightWeights()
    # A score at or above `threshold` is at risk (leads are told once); from `watch` it is watched.
    threshold: int = Field(60, ge=1, le=100)
    watch: int = Field(30, ge=0, le=100)
    # After a warning, the score must fall below this before a new crossing warns again.
    rearm_below: int = Field(45, ge=0, le=100)
    # Complaints, breaches and survey scores older than this no longer count.
    window: Duration = timedelta(days=90)
    # "Silent after a bad experience": no message from the customer for this long.
    silence_after: Duration = timedelta(days=14)
    # "Contacting more often": this many times their usual weekly rate, and at least `rising_min`
    # messages in the recent week.
    rising_factor: float = Field(2.0, gt=1)
    rising_min: float = Field(3.0, gt=0)
    # The language of reasons in alerts and `kefu customers at-risk` (zh or en).
    language: Literal["zh", "en"] = "zh"
    # Every customer's score is recomputed this often (messages update their sender's at once).
    recompute_every: Duration = timedelta(hours=1)

    @model_validator(mode="after")
    def _bands(self) -> InsightConfig:
        if self.watch > self.threshold:
            raise ValueError(f"watch ({self.watch}) must not be above threshold ({self.threshold})")
        if self.rearm_below > self.threshold:
            raise ValueError(
                f"rearm_below ({self.rearm_below}) must not be above threshold ({self.threshold})"
            )
        if self.recompute_every < timedelta(minutes=1):
            raise ValueError("recompute_every must be at least 1m")
        return self


# The channels kefu has, each configured in its own section here and wired in bot/app.py.
CHANNELS = ("telegram", "email", "webhook")


class Config(Section):
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    telegram: TelegramConfig = TelegramConfig()
    email: EmailConfig = EmailConfig()
    webhook: WebhookConfig = WebhookConfig()
    outbox: OutboxConfig = OutboxConfig()
    pipeline: PipelineConfig = PipelineConfig()
    logging: LoggingConfig = LoggingConfig()
    complaints: ComplaintsConfig = ComplaintsConfig()
    campaigns: CampaignsConfig = CampaignsConfig()
    customers: CustomersConfig = CustomersConfig()
    routing: RoutingConfig = RoutingConfig()
    sla: SlaConfig = SlaConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    survey: SurveyConfig = SurveyConfig()
    insight: InsightConfig = InsightConfig()

    def channels_on(self) -> frozenset[str]:
        """The channels this configuration turns on (the webhook channel is always there: a source
        is a section away)."""
        on = {"webhook"}
        if self.telegram.enabled:
            on.add("telegram")
        if self.email.enabled:
            on.add("email")
        return frozenset(on)

    def unsendable(self, channel: str, address: str) -> str | None:
        """Why nothing can be sent to `address` on `channel` under this configuration, or None:
        a webhook address ("source:user") needs its source's callback_url."""
        if channel == "webhook":
            source = address.partition(":")[0]
            found = self.webhook.sources.get(source)
            if found is None or not found.callback_url:
                return f"webhook source {source!r} has no callback_url"
        return None


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    where = f"[{'.'.join(loc[:-1])}] {loc[-1]}" if len(loc) > 1 else loc[0] if loc else "(top)"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a known setting"
    if error["type"] == "missing":
        return f"{where} is required"
    return f"{where} has value {error['input']!r}: {error['msg']}"


def parse_config(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (pass --config PATH)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return relative_to(parse_config(data, str(path)), path.resolve().parent)


def relative_to(config: Config, folder: Path) -> Config:
    """Relative paths in a config file mean "next to this file", wherever kefu is started from:
    `kefu conversations list --config /srv/kefu/config.toml` must find /srv/kefu/kefu.db, and
    the mail store, templates, CA file and cue files beside it."""

    def beside(path: str) -> str:
        return path if Path(path).is_absolute() else str(folder / path)

    email = config.email.model_copy(
        update={
            "store_dir": beside(config.email.store_dir),
            "ca_file": beside(config.email.ca_file) if config.email.ca_file else None,
        }
    )
    template_dir = config.campaigns.template_dir
    campaigns = config.campaigns.model_copy(
        update={"template_dir": beside(template_dir) if template_dir else None}
    )
    complaints = config.complaints.model_copy(
        update={"extra_cues": tuple(beside(p) for p in config.complaints.extra_cues)}
    )
    update: dict[str, object] = {"email": email, "campaigns": campaigns, "complaints": complaints}
    url = make_url(config.storage.url)
    database = url.database
    if (
        url.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).is_absolute()
    ):
        absolute = url.set(database=str(folder / database)).render_as_string(hide_password=False)
        update["storage"] = config.storage.model_copy(update={"url": absolute})
    return config.model_copy(update=update)


def secret(env_var: str, env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(env_var, "")
    return value or None


def require_secret(env_var: str, needed_for: str, env: Mapping[str, str] | None = None) -> str:
    value = secret(env_var, env)
    if value is None:
        raise ConfigError(
            f"{needed_for} is enabled but environment variable {env_var} is not set; "
            f"set it, or turn {needed_for} off in config.toml"
        )
    return value
