"""The support team: who may answer customers, in which role."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ROLES, Staff


class StaffError(ValueError):
    pass


async def add(
    session: AsyncSession,
    name: str,
    *,
    telegram_user_id: int | None = None,
    email: str | None = None,
    role: str = "agent",
) -> Staff:
    name = name.strip()
    if not name:
        raise StaffError("--name must not be empty")
    if role not in ROLES:
        raise StaffError(f"--role has value {role!r}: use one of {', '.join(ROLES)}")
    if await session.scalar(select(Staff).where(Staff.name == name)) is not None:
        raise StaffError(f"staff member {name!r} already exists")
    if telegram_user_id is not None:
        holder = await session.scalar(
            select(Staff).where(Staff.telegram_user_id == telegram_user_id)
        )
        if holder is not None:
            raise StaffError(f"Telegram id {telegram_user_id} already belongs to {holder.name!r}")
    member = Staff(name=name, telegram_user_id=telegram_user_id, email=email, role=role)
    session.add(member)
    await session.flush()
    return member


async def all_staff(session: AsyncSession) -> list[Staff]:
    return list(await session.scalars(select(Staff).order_by(Staff.id)))


async def by_name(session: AsyncSession, name: str) -> Staff | None:
    return await session.scalar(select(Staff).where(Staff.name == name))


async def by_id(session: AsyncSession, staff_id: int) -> Staff | None:
    return await session.get(Staff, staff_id)


async def active_by_telegram_id(session: AsyncSession, telegram_user_id: str | int) -> Staff | None:
    return await session.scalar(
        select(Staff).where(Staff.telegram_user_id == telegram_user_id, Staff.active.is_(True))
    )


async def telegram_ids(session: AsyncSession) -> set[int]:
    """Telegram accounts of active staff."""
    found = await session.scalars(
        select(Staff.telegram_user_id).where(
            Staff.active.is_(True), Staff.telegram_user_id.is_not(None)
        )
    )
    return {int(n) for n in found if n is not None}


async def active(
    session: AsyncSession, *, on_duty: bool = False, names: Sequence[str] = ()
) -> list[Staff]:
    """Active staff by id (only those on duty; only those named, when names are given)."""
    query = select(Staff).where(Staff.active.is_(True)).order_by(Staff.id)
    if on_duty:
        query = query.where(Staff.on_duty.is_(True))
    if names:
        query = query.where(Staff.name.in_(names))
    return list(await session.scalars(query))


async def leads(
    session: AsyncSession, *, named: Sequence[str] = (), among: Sequence[str] = ()
) -> list[Staff]:
    """Active leads by id: those named, or else every lead and admin (of `among`, if given)."""
    query = select(Staff).where(Staff.active.is_(True)).order_by(Staff.id)
    if named:
        query = query.where(Staff.name.in_(named))
    else:
        query = query.where(Staff.role.in_(ROLES[ROLES.index("lead") :]))
        if among:
            query = query.where(Staff.name.in_(among))
    return list(await session.scalars(query))
