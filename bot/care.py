"""Wires complaint care into a Kefu: the router, the observers (complaint flags, acknowledgements,
survey answers) and the periodic jobs (SLA checks, auto-close)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from bot.config import Config
from bot.effects import Phase
from bot.intents import StaffRoom
from channels.base import Channel
from channels.telegram import TelegramChannel
from handlers import lifecycle, sla, survey
from handlers.acknowledge import Acknowledger
from handlers.routing import Router
from handlers.staff_alerts import ComplaintAlerts
from storage.db import Database
from storage.models import utcnow
from storage.outage import log_failure

if TYPE_CHECKING:
    from bot.app import Kefu
    from bot.scheduler import CampaignScheduler

log = logging.getLogger("kefu.care")

Clock = Callable[[], datetime]
AUTO_CLOSE_EVERY_SECONDS = 600.0


def staff_room(config: Config, running: Mapping[str, Channel] | None = None) -> StaffRoom | None:
    """Where staff work: the Telegram channel, its staff group ([telegram] staff_chat_id, if set)
    and agents' private chats with the bot. None when Telegram is off, or not among the `running`
    channels: staff posts would go nowhere, the event in the conversation's log is the
    notification."""
    tg = config.telegram
    if not tg.enabled:
        return None
    if running is None:
        max_text = TelegramChannel.max_text
    elif (channel := running.get(TelegramChannel.name)) is not None:
        max_text = channel.max_text
    else:
        return None
    group = str(tg.staff_chat_id) if tg.staff_chat_id is not None else None
    return StaffRoom(TelegramChannel.name, group, max_text)


class Care:
    def __init__(self, kefu: Kefu, *, clock: Clock = utcnow) -> None:
        config = kefu.config
        self.db: Database = kefu.db
        self.config = config
        self.clock = clock
        self.router = Router(config)  # a bad [routing] stops start-up with a ConfigError
        self.staff_room = staff_room(config, kefu.channels)

    async def check_sla(self) -> list[sla.Breach]:
        return await sla.check(self.db, self.clock(), self.router, staff_room=self.staff_room)

    async def auto_close(self) -> int:
        return await lifecycle.auto_close(self.db, self.clock(), self.config)

    def jobs(self) -> list[tuple[str, Callable[[], Awaitable[object]], float]]:
        return [
            (
                "care.sla",
                _guarded("sla.check", self.check_sla),
                self.config.sla.check_every.total_seconds(),
            ),
            (
                "care.auto_close",
                _guarded("lifecycle.auto_close", self.auto_close),
                AUTO_CLOSE_EVERY_SECONDS,
            ),
        ]


def _guarded(name: str, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        try:
            return await job()
        except Exception as exc:  # noqa: BLE001 - a failed run is logged; the next one picks the work up again
            log_failure(log, f"{name}.failure", exc)
            return None

    return run


def build_care(kefu: Kefu, scheduler: CampaignScheduler) -> Care:
    """Needs the channels (staff posts go to Telegram only when it runs); its jobs join the
    scheduler's."""
    care = Care(kefu)
    kefu.observers.add(Phase.COMPLAINT, ComplaintAlerts(care.router, care.staff_room))
    kefu.observers.add(Phase.ACKNOWLEDGE, Acknowledger(kefu.config))
    kefu.observers.add(Phase.SURVEY, survey.survey_observer)
    scheduler.jobs.extend(care.jobs())
    return care
