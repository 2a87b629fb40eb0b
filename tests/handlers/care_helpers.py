"""A pipeline wired like Kefu wires complaint care, without the HTTP server and channels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.config import Config, parse_config
from bot.intents import StaffRoom
from bot.messages import Inbound
from bot.pipeline import Pipeline
from bot.plugins import pipeline as plugged_pipeline
from channels.telegram import TelegramChannel
from handlers import survey
from handlers.acknowledge import Acknowledger
from handlers.routing import Router
from handlers.staff_alerts import ComplaintAlerts
from storage.db import Database

STAFF_CHAT = -1001234567890
# The staff room bot/app.py wires for a Telegram staff group (bot.care.staff_room).
STAFF_ROOM = StaffRoom(TelegramChannel.name, str(STAFF_CHAT), TelegramChannel.max_text)


def room_of(staff_chat_id: int | None) -> StaffRoom | None:
    if staff_chat_id is None:
        return None
    return StaffRoom(TelegramChannel.name, str(staff_chat_id), TelegramChannel.max_text)


def care_pipeline(
    db: Database, config: Config, *, staff_chat_id: int | None = STAFF_CHAT
) -> tuple[Pipeline, Router]:
    router = Router(config)
    observers = [
        ComplaintAlerts(router, room_of(staff_chat_id)),
        Acknowledger(config),
        survey.survey_observer,
    ]
    return plugged_pipeline(db, route=router, observers=observers), router


def config(**sections: Any) -> Config:
    return parse_config(sections)


def message(
    n: int | str, text: str, at: datetime, *, user: str = "u1", kind: str = "message", **kw: Any
) -> Inbound:
    return Inbound(
        channel="webhook", external_id=f"shop:{n}", address=f"shop:{user}", text=text,
        received_at=at, kind=kind, **kw,
    )
