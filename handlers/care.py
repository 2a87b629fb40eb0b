"""What acknowledgements, surveys and escalations share: their templates, times and threading."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Config
from bot.effects import CustomerView
from bot.messages import Inbound
from handlers.templating import Templates
from storage.models import Customer


@lru_cache(maxsize=8)
def _templates(template_dir: str | None, default_language: str) -> Templates:
    return Templates(template_dir, default_language)


def texts(config: Config) -> Templates:
    """The same templates greetings use: [campaigns] template_dir overrides the built-in ones."""
    return _templates(config.campaigns.template_dir, config.campaigns.default_language)


def zone_of(customer: Customer | CustomerView | None, config: Config) -> str:
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


def answering(inbound: Inbound | None) -> dict[str, Any]:
    """The thread a message answering `inbound` belongs to, as a Threaded intent's fields: the
    ids that message answered and its own, oldest first, and the title its sender gave it. Each
    channel threads by them its own way (email headers, a Telegram reply)."""
    if inbound is None:
        return {}
    return thread_of(inbound.thread, inbound.external_id, inbound.title)


def thread_of(earlier: tuple[str, ...], external_id: str, title: str | None) -> dict[str, Any]:
    """The Threaded intent's fields for an answer to the message `external_id`, which itself
    followed `earlier` (oldest first)."""
    return {"answers": (*earlier, external_id), "title": title or None}
