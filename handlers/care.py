"""What acknowledgements, surveys and escalations share: their templates, times and threading."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Config
from bot.messages import Inbound
from handlers.templating import Templates
from storage.models import Customer


@lru_cache(maxsize=8)
def _templates(template_dir: str | None, default_language: str) -> Templates:
    return Templates(template_dir, default_language)


def texts(config: Config) -> Templates:
    """The same templates greetings use: [campaigns] template_dir overrides the built-in ones."""
    return _templates(config.campaigns.template_dir, config.campaigns.default_language)


def zone_of(customer: Customer | None, config: Config) -> str:
    if customer is not None and customer.timezone:
        try:
            ZoneInfo(customer.timezone)
            return customer.timezone
        except (KeyError, ValueError):
            pass
    return config.campaigns.default_timezone


def local_time(when: datetime, zone: str) -> str:
    """'2026-03-02 09:00 (Asia/Shanghai)': a promise the customer can read in their own time."""
    return f"{when.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} ({zone})"


def thread_meta(inbound: Inbound | None, language: str) -> dict[str, Any]:
    """What the customer's client needs to thread a bot message under theirs (email, Telegram)."""
    meta: dict[str, Any] = {"language": language}
    if inbound is None:
        return meta
    meta["in_reply_to"] = inbound.external_id
    meta["references"] = [*inbound.meta.get("references", []), inbound.external_id]
    if inbound.meta.get("subject"):
        meta["subject"] = inbound.meta["subject"]
    return meta
