"""Telegram's flood limits and message size, kept on kefu's side so Telegram never has to say 429.

Limits (core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this): about 30 messages
a second overall, no more than 20 a minute into one group, and about one a second into one private
chat. A message is at most 4096 characters.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from bot.text import utf16_len as utf16_len
from channels.base import Deferred

TEXT_LIMIT = 4096


class Slot:
    """One send's place in a window; it counts from when it is taken until `done()` plus the
    window, because the receiver counts it at some moment in between that we cannot see."""

    __slots__ = ("finished_at",)

    def __init__(self) -> None:
        self.finished_at = math.inf  # in flight


class SlidingWindow:
    """At most `limit` sends in any `window` seconds, as the receiver counts them; waiters queue
    in arrival order.

    A sliding window rather than a token bucket: a bucket that starts full allows twice the rate in
    its first window, which is exactly what Telegram counts against us. And a slot is timed from
    when the answer came back, not from when the send started: the receiver saw the send somewhere
    between the two, so a new send waits `window` after the old one's answer. Network jitter then
    can never squeeze `limit + 1` sends into one of the receiver's windows; the cost is one
    round-trip per window (about 2% at 20 ms)."""

    POLL = 0.005  # every slot in flight: look again this soon

    def __init__(
        self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"limit must be >= 1 and window > 0, got {limit} per {window}s")
        self.limit = limit
        self.window = window
        self.clock = clock
        self._slots: list[Slot] = []
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self._queued = 0  # acquire() calls waiting for the lock or a slot

    @classmethod
    def per_second(cls, rate: float) -> SlidingWindow:
        limit = max(1, int(rate))
        return cls(limit, limit / rate)

    @classmethod
    def per_minute(cls, rate: float, *, minute: float = 60.0) -> SlidingWindow:
        limit = max(1, int(rate))
        return cls(limit, minute * limit / rate)

    def delay(self) -> float:
        """Seconds until a send is allowed; 0 when one is allowed now."""
        now = self.clock()
        self._slots = [s for s in self._slots if s.finished_at > now - self.window]
        wait = max(0.0, self._paused_until - now)
        if len(self._slots) < self.limit:
            return wait
        oldest = min(s.finished_at for s in self._slots)
        if oldest == math.inf:
            return max(wait, self.POLL)
        return max(wait, oldest + self.window - now)

    def take(self) -> Slot:
        slot = Slot()
        self._slots.append(slot)
        return slot

    def done(self, slot: Slot) -> None:
        slot.finished_at = self.clock()

    def idle(self) -> bool:
        """Nothing in flight or counted, no pause: a fresh window would behave the same."""
        return self.delay() == 0 and not self._slots and not self._queued

    def push_back(self, seconds: float) -> None:
        """Telegram said wait (429 retry_after): no send in this window until then."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    async def acquire(self, max_wait: float | None = None) -> Slot:
        """Waits for a slot and takes it; raises Deferred if the wait would exceed max_wait.
        Call done(slot) when the send's answer (or error) is back."""
        if max_wait is not None:
            # Sends already queued here go first: a wait behind them is part of this one's. Without
            # this, twenty posts claimed together each wait a slot in turn and hold up the claim.
            wait = self.delay() + self._queued * self.window / self.limit
            if wait > max_wait:
                raise Deferred(f"rate limit: next slot in {wait:.1f}s", retry_after=wait)
        self._queued += 1
        try:
            async with self._lock:
                while (wait := self.delay()) > 0:
                    if max_wait is not None and wait > max_wait:
                        # Waiting this long would outlive an outbox claim: the row waits its
                        # turn in the outbox instead, without counting an attempt.
                        raise Deferred(f"rate limit: next slot in {wait:.1f}s", retry_after=wait)
                    await asyncio.sleep(wait)
                return self.take()
        finally:
            self._queued -= 1


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Parts of at most `limit` UTF-16 units, cut at a line break, else a space, else anywhere."""
    if utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _fit(rest, limit)
        window = rest[:cut]
        for sep in ("\n", " "):
            at = window.rfind(sep)
            if at >= cut // 2:  # never leave a tiny sliver to keep a separator
                cut = at + 1
                break
        parts.append(rest[:cut].rstrip("\n ") or rest[:cut])
        rest = rest[cut:]
    if rest.strip():
        parts.append(rest)
    return parts


def _fit(text: str, limit: int) -> int:
    """The longest prefix length (in characters) whose UTF-16 length is within limit."""
    units = 0
    for n, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return n
    return len(text)
