"""Routing: which team, which priority, who answers, by when — from [routing] and [sla] in config.

Rules are tried in order; the first whose conditions all hold names the team and the priority. No
rule: the default team, and a priority from the message (a complaint is high, a severe one urgent,
a VIP's message high). VIP and high severity come first whatever a rule says: a severe complaint is
never below urgent and a VIP never below high.

The assignee is chosen among the team's active, on-duty staff: round-robin (the member after the one
assigned last, kept in routing_cursors) or least open conversations. A team with nobody on duty
leaves the conversation unassigned; its leads see it in the staff group.

Due times start when the team next opens: a complaint on Friday night has its first-response clock
start on Monday morning (or on the next working day after a holiday).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.config import PRIORITY_RANK, Config, ConfigError, RuleConfig, TeamConfig
from bot.effects import ConversationView, CustomerView, Decision, Verdict
from bot.lookup import Lookup, StaffView
from bot.messages import Inbound
from handlers import segments
from handlers.business_hours import BusinessHours
from handlers.templating import language_of
from storage.models import Customer

log = logging.getLogger("kefu.routing")

DEFAULT_TEAM = "support"


def higher(a: str, b: str) -> str:
    return a if PRIORITY_RANK.get(a, 1) >= PRIORITY_RANK.get(b, 1) else b


def matches(
    rule: RuleConfig, verdict: Verdict, customer: Customer | CustomerView, inbound: Inbound,
    in_segments: frozenset[str] = frozenset(),
) -> bool:
    if rule.segment is not None and rule.segment not in in_segments:
        return False
    if rule.channel is not None and inbound.channel not in rule.channel:
        return False
    if rule.language is not None:
        language = language_of(customer.language or inbound.language, "")
        if language not in {language_of(x, "") for x in rule.language}:
            return False
    if rule.tags is not None and not set(rule.tags) & set(customer.tags or []):
        return False
    if rule.vip is not None and bool(customer.vip) != rule.vip:
        return False
    if rule.complaint is not None and verdict.is_complaint != rule.complaint:
        return False
    return rule.severity is None or (
        verdict.is_complaint and verdict.severity == rule.severity
    )


def default_priority(verdict: Verdict, customer: Customer | CustomerView) -> str:
    if verdict.is_complaint:
        return "urgent" if verdict.severity == "high" else "high"
    return "high" if customer.vip else "normal"


def floor(verdict: Verdict, customer: Customer | CustomerView) -> str:
    if verdict.is_complaint and verdict.severity == "high":
        return "urgent"
    return "high" if customer.vip else "low"


def _due(hours: BusinessHours, start: datetime, target: timedelta | None) -> datetime | None:
    if target is None:
        return None
    # A team that never opens again (every day a holiday) still gets a due time: the wall clock's.
    return hours.add(start, target) or start + target


class Router:
    """The pipeline's route(lookup, verdict, customer, conversation, inbound) -> Decision."""

    def __init__(self, config: Config) -> None:
        self.config = config
        cfg = config.routing
        teams = list(cfg.teams) or [TeamConfig(name=DEFAULT_TEAM, timezone="UTC")]
        self.teams: dict[str, TeamConfig] = {}
        for n, team in enumerate(teams):
            if team.name in self.teams:
                raise ConfigError(
                    f"[routing.teams.{n}] name has value {team.name!r}: a team of that name exists"
                )
            self.teams[team.name] = team
        self.default_team = cfg.default_team or teams[0].name
        segments.check_names(config)
        # The segments rules name: the only ones worth asking about a customer.
        self.rule_segments = frozenset(r.segment for r in cfg.rules if r.segment is not None)
        self.uses_segments = bool(self.rule_segments)
        if self.default_team not in self.teams:
            raise ConfigError(
                f"[routing] default_team has value {self.default_team!r}: no team of that name "
                f"(teams: {', '.join(self.teams)})"
            )
        for n, rule in enumerate(cfg.rules):
            if rule.team is not None and rule.team not in self.teams:
                raise ConfigError(
                    f"[routing.rules.{n}] team has value {rule.team!r}: no team of that name "
                    f"(teams: {', '.join(self.teams)})"
                )
        self.hours = {name: BusinessHours.of(team) for name, team in self.teams.items()}

    def clock(self, team: str | None) -> BusinessHours:
        """The SLA clock of a conversation's team (the default team's for none)."""
        return self.hours[self.team(team).name]

    def team(self, name: str | None) -> TeamConfig:
        return self.teams.get(name or self.default_team) or self.teams[self.default_team]

    def pick_rule(
        self, verdict: Verdict, customer: Customer | CustomerView, inbound: Inbound,
        in_segments: frozenset[str] = frozenset(),
    ) -> tuple[int | None, RuleConfig | None]:
        for n, rule in enumerate(self.config.routing.rules):
            if matches(rule, verdict, customer, inbound, in_segments):
                return n, rule
        return None, None

    async def __call__(
        self,
        reads: Lookup,
        verdict: Verdict,
        customer: CustomerView,
        conversation: ConversationView | None,
        inbound: Inbound,
    ) -> Decision:
        in_segments = (
            await segments.of_customer(
                reads,
                self.config,
                customer,
                inbound.channel,
                inbound.received_at,
                among=self.rule_segments,
            )
            if self.uses_segments
            else frozenset()
        )
        n, rule = self.pick_rule(verdict, customer, inbound, in_segments)
        priority = (rule.priority if rule and rule.priority else None) or default_priority(
            verdict, customer
        )
        priority = higher(priority, floor(verdict, customer))
        wanted = (rule.team if rule else None) or self.default_team
        new_complaint = verdict.is_complaint and not (
            conversation is not None and conversation.is_complaint
        )
        team_name = wanted
        reassign = False
        if conversation is not None and conversation.team is not None:
            # A conversation stays with its team, unless it turns into a complaint for another one.
            reassign = new_complaint and conversation.team != wanted and wanted in self.teams
            team_name = wanted if reassign else conversation.team
        team = self.team(team_name)
        now = inbound.received_at
        hours = self.hours[team.name]
        opens = hours.next_open(now)
        start = opens or now
        sla = self.config.sla
        first_target = sla.first_response.get(priority)  # type: ignore[call-overload]
        resolution_target = sla.resolution.get(priority)  # type: ignore[call-overload]
        # Due times count business hours only: the same clock the escalations and reports use.
        first_due = _due(hours, now, first_target)
        assignee: int | None = None
        if conversation is not None and (conversation.assignee is None or reassign):
            assignee = await self.assign(reads, team)
        decision = Decision(
            priority=priority,
            assignee_id=assignee,
            notify_staff=verdict.is_complaint,
            team=team.name,
            new_complaint=new_complaint,
            reassign=reassign,
            outside_hours=opens != now,
            expected_response_by=first_due or start,
            first_response_due=first_due,
            resolution_due=_due(hours, now, resolution_target),
            rule=n,
            round_robin=(
                assignee if self.config.routing.assignment == "round_robin" else None
            ),
        )
        if verdict.is_complaint or reassign:
            log.info(
                "routing.decision conversation=%s team=%s priority=%s assignee=%s rule=%s "
                "outside_hours=%s",
                conversation.id if conversation else None,
                team.name,
                priority,
                assignee,
                n,
                decision.outside_hours,
            )
        return decision

    async def leads(self, reads: Lookup, team: TeamConfig) -> Sequence[StaffView]:
        return await reads.leads(named=team.leads, among=team.members)

    async def assign(self, reads: Lookup, team: TeamConfig) -> int | None:
        method = self.config.routing.assignment
        if method == "none":
            return None
        # Asked for every message of a batch: the lookup reads the team once per transaction.
        candidates = await reads.team_members(team.members, on_duty=True)
        if not candidates:
            log.info("routing.unassigned team=%s reason=nobody on duty", team.name)
            return None
        if method == "least_open":
            return await least_open(reads, candidates)
        return await round_robin(reads, team.name, candidates)


async def round_robin(reads: Lookup, team: str, candidates: Sequence[StaffView]) -> int:
    """The on-duty member after the team's last assignment. The cursor moves in the pipeline,
    which stores Decision.round_robin; within one transaction this memo has the latest."""
    cursors = reads.memo("routing.cursors")
    if team not in cursors:
        cursors[team] = await reads.last_assigned(team)
    last = cursors[team] or 0
    chosen = next((s for s in candidates if s.id > last), candidates[0])
    cursors[team] = chosen.id
    return chosen.id


async def least_open(reads: Lookup, candidates: Sequence[StaffView]) -> int:
    ids = [s.id for s in candidates]
    counts = reads.memo("routing.open_counts")
    missing = [i for i in ids if i not in counts]
    if missing:
        found = await reads.open_counts(missing)
        counts.update({i: 0 for i in missing})
        counts.update(found)
    chosen = min(ids, key=lambda i: (counts[i], i))
    counts[chosen] += 1  # this batch's own assignments count before they are flushed
    return chosen


# The router of the default config (one team of all staff, around the clock): the pipeline's
# when none is configured.
route = Router(Config())
