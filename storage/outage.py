"""How kefu reports a failure that may come from the database being away.

A restart, failover or cut connection makes every periodic job and loop fail at once, and
keeps failing until the database is back: one line each, the error's kind and first line, is
what an operator needs then. A traceback per tick buries the log, and a database error's text
goes on with the statement and its parameters (the customer's words); the first line does not.
Anything else is a defect in kefu and keeps its traceback."""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

AWAY: tuple[type[BaseException], ...] = (DBAPIError, OSError, TimeoutError)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, AWAY)


def brief(exc: BaseException) -> str:
    """The error's kind and first line: database errors carry the statement and its parameters
    (customers' messages) after that, which do not belong in logs."""
    first = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def log_failure(log: logging.Logger, event: str, exc: BaseException, detail: str = "") -> None:
    """Logs `event` for a failed job or round: `event detail error=Kind: first line`."""
    prefix = f"{event} {detail}" if detail else event
    if is_outage(exc):
        log.error("%s error=%s", prefix, brief(exc))
    else:
        log.error("%s error=%s", prefix, brief(exc), exc_info=exc)
