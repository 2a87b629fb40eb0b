"""Roles (分级权限): what agents, leads and admins may do, for staff commands and the CLI alike.

Each role has everything of the roles below it. "own" actions apply to conversations assigned to
the actor; their "any" twin is for leads. The CLI runs as the operating-system user, who is an admin
unless `--as NAME` names a staff member to act as (anyone who can run the CLI can read the database
file or its credentials anyway); in the Telegram staff group the sender's staff record decides.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from storage import staff
from storage.models import ROLES, Staff

RANK = {role: n for n, role in enumerate(ROLES)}

# action -> the lowest role allowed to do it.
PERMISSIONS: dict[str, str] = {
    # agent
    "reply": "agent",
    "note": "agent",
    "claim": "agent",  # an unassigned conversation (or one's own)
    "history": "agent",
    "whois": "agent",
    "resolve.own": "agent",
    "pending.own": "agent",
    # lead
    "assign": "lead",
    "claim.any": "lead",  # taking over a colleague's conversation
    "reopen": "lead",
    "vip": "lead",
    "tag": "lead",
    "resolve.any": "lead",
    "pending.any": "lead",
    "close": "lead",
    "report": "lead",
    "outbox.retry": "lead",  # send a dead outbox row again
    # admin
    "staff.add": "admin",
    "staff.remove": "admin",
    "staff.update": "admin",
    "config": "admin",
    "audit": "admin",
    "customers.forget": "admin",
    "customers.merge": "admin",
}


class Forbidden(ValueError):
    """The actor's role does not allow the action; the message names both. A ValueError like
    every other refused request, so the CLI prints it as one line."""


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    role: str
    staff_id: int | None = None

    @classmethod
    def of(cls, member: Staff) -> Actor:
        return cls(member.name, member.role, member.id)


SYSTEM = Actor("system", "admin")


def allowed(role: str, action: str) -> bool:
    needed = PERMISSIONS.get(action)
    if needed is None:
        raise KeyError(f"unknown action {action!r}")
    return RANK.get(role, -1) >= RANK[needed]


def require(actor: Actor, action: str, subject: str = "") -> None:
    if not allowed(actor.role, action):
        where = f" on {subject}" if subject else ""
        raise Forbidden(
            f"{actor.name} ({actor.role}) may not {action}{where}: "
            f"it needs role {PERMISSIONS[action]}"
        )


def require_on(actor: Actor, verb: str, assignee: int | None, subject: str = "") -> None:
    """`verb`.own when the conversation is the actor's, else `verb`.any."""
    own = actor.staff_id is not None and assignee == actor.staff_id
    require(actor, f"{verb}.{'own' if own else 'any'}", subject)


def require_claim(actor: Actor, assignee: int | None, subject: str = "") -> None:
    """An agent claims an unassigned conversation; taking one from a colleague is a lead's call
    (it would let an agent resolve it, which resolve.own forbids)."""
    mine = actor.staff_id is not None and assignee == actor.staff_id
    require(actor, "claim" if assignee is None or mine else "claim.any", subject)


async def cli_actor(session: AsyncSession, as_name: str | None) -> Actor:
    """`--as NAME`: that active staff member; without it, the OS user as admin."""
    if as_name is None:
        return Actor(getpass.getuser(), "admin")
    member = await staff.by_name(session, as_name)
    if member is None:
        raise LookupError(f"--as has value {as_name!r}: no staff member of that name")
    if not member.active:
        raise Forbidden(f"--as has value {as_name!r}: that staff member is not active")
    return Actor.of(member)


def matrix() -> dict[str, list[str]]:
    """role -> the actions it may do (for `kefu staff roles` and the README)."""
    return {role: [a for a in PERMISSIONS if allowed(role, a)] for role in ROLES}
