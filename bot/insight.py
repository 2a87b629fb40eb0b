"""Wires customer insight into a Kefu: the churn observer on the pipeline and the periodic full
recompute on the scheduler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.effects import Phase
from handlers import followup
from handlers.churn import Churn
from handlers.consent import ConsentObserver
from handlers.greetings import Reach
from handlers.templating import Templates
from storage.outage import log_failure

if TYPE_CHECKING:
    from bot.app import Kefu
    from bot.care import Care
    from bot.scheduler import CampaignScheduler

log = logging.getLogger("kefu.insight")


def build_insight(kefu: Kefu, care: Care, scheduler: CampaignScheduler) -> Churn | None:
    """The churn observer (in Phase.INSIGHT: after care's) routes warnings with care's router;
    its recompute and the follow-ups join the scheduler's jobs."""
    build_followups(kefu, care, scheduler)
    cfg = kefu.config.insight
    if not cfg.enabled:
        return None
    consent = next((o for o in kefu.observers if isinstance(o, ConsentObserver)), None)
    room = care.staff_room
    churn = Churn(
        kefu.config,
        care.router,
        staff_room=room,
        # Without a staff group, warnings go to the leads' private chats on the staff channel.
        lead_chats=room is not None and room.group is None,
        is_opt_out=consent.is_opt_out if consent is not None else None,
    )
    kefu.observers.add(Phase.INSIGHT, churn)

    async def recompute() -> object:
        try:
            return await churn.recompute(kefu.db, care.clock())
        except Exception as exc:  # noqa: BLE001 - logged; the next run starts over
            log_failure(log, "insight.recompute.failure", exc)
            return None

    scheduler.jobs.append(("insight.recompute", recompute, cfg.recompute_every.total_seconds()))
    return churn


def build_followups(
    kefu: Kefu, care: Care, scheduler: CampaignScheduler
) -> followup.FollowUps:
    """回访: checks its template at start (a broken one stops start-up) and plans on the
    campaign planner's interval."""
    campaigns = kefu.config.campaigns
    followups = followup.build(
        kefu.config,
        Templates(campaigns.template_dir, campaigns.default_language),
        Reach.of(kefu.config, kefu.channels),
    )

    async def tick() -> object:
        try:
            return await followups.tick(kefu.db, care.clock())
        except Exception as exc:  # noqa: BLE001 - logged; the next run picks the work up again
            log_failure(log, "followup.plan.failure", exc)
            return None

    if campaigns.followup.enabled:
        scheduler.jobs.append(("campaigns.followup", tick, campaigns.plan_interval_minutes * 60.0))
    return followups
