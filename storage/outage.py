"""How kefu reports a failure that may come from the database being away.

A restart, failover or cut connection makes every periodic job and loop fail at once, and
keeps failing until the database is back: one line each, naming the error's type, is what
an operator needs then. A traceback per tick buries the log, and an exception's text can
carry what a statement was about (the customer's words); the type name carries neither.
Anything else is a defect in kefu and keeps its traceback."""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

AWAY: tuple[type[BaseException], ...] = (DBAPIError, OSError, TimeoutError)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, AWAY)


def log_failure(log: logging.Logger, event: str, exc: BaseException, detail: str = "") -> None:
    """Logs `event` for a failed job or round: `event error=Type detail`."""
    suffix = f" {detail}" if detail else ""
    if is_outage(exc):
        log.error("%s error=%s%s", event, type(exc).__name__, suffix)
    else:
        log.error("%s error=%s%s", event, type(exc).__name__, suffix, exc_info=exc)
