"""The role matrix (分级权限): each role has everything of the roles below it."""

from __future__ import annotations

import pytest

from handlers import roles
from handlers.roles import Actor, Forbidden

CASES = [
    ("agent", "reply", True),
    ("agent", "note", True),
    ("agent", "claim", True),
    ("agent", "resolve.own", True),
    ("agent", "resolve.any", False),
    ("agent", "assign", False),
    ("agent", "reopen", False),
    ("agent", "vip", False),
    ("agent", "tag", False),
    ("agent", "report", False),
    ("agent", "audit", False),
    ("agent", "staff.add", False),
    ("lead", "assign", True),
    ("lead", "reopen", True),
    ("lead", "vip", True),
    ("lead", "tag", True),
    ("lead", "resolve.any", True),
    ("lead", "report", True),
    ("lead", "close", True),
    ("lead", "staff.add", False),
    ("lead", "audit", False),
    ("lead", "config", False),
    ("admin", "staff.add", True),
    ("admin", "staff.remove", True),
    ("admin", "audit", True),
    ("admin", "config", True),
    ("admin", "reply", True),
    ("nobody", "reply", False),
]


@pytest.mark.parametrize(("role", "action", "ok"), CASES, ids=[f"{r}-{a}" for r, a, _ in CASES])
def test_matrix(role: str, action: str, ok: bool) -> None:
    assert roles.allowed(role, action) is ok


def test_own_versus_any() -> None:
    amy = Actor("amy", "agent", 7)
    roles.require_on(amy, "resolve", 7)
    with pytest.raises(
        Forbidden, match=r"amy \(agent\) may not resolve.any on conversation 3: it needs role lead"
    ):
        roles.require_on(amy, "resolve", 8, "conversation 3")
    roles.require_on(Actor("lou", "lead", 9), "resolve", None)


def test_unknown_action_is_a_bug_not_a_denial() -> None:
    with pytest.raises(KeyError):
        roles.allowed("admin", "launch")


def test_every_role_includes_the_one_below() -> None:
    table = roles.matrix()
    assert set(table["agent"]) < set(table["lead"]) < set(table["admin"]) == set(roles.PERMISSIONS)
