"""Per-connection state the router consults before and after each attempt: its keys, its circuit
breaker, its concurrency limit. Kept across configuration reloads for connections that did not change.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from .config import BreakerSettings, Connection, RetrySettings
from .errors import Reason, UpstreamError

# Failures that say something about the key rather than the connection: another key may serve.
KEY_FAILURES = frozenset({Reason.RATE_LIMITED, Reason.AUTH_ERROR})
SET_ASIDE_SECONDS = 300.0  # a key refused with 401/403
REST_SECONDS = 5.0  # a key rate limited without a Retry-After
# Failures that say the connection itself is unwell: they count towards opening its breaker.
HEALTH_FAILURES = frozenset({Reason.CONNECT_ERROR, Reason.TIMEOUT, Reason.SERVER_ERROR, Reason.BAD_RESPONSE})
RETRY_BACKOFF = 0.25  # seconds before the first same-connection retry when the answer named no wait


class KeyPool:
    """One connection's keys, used in turn; a refused key is set aside, a rate-limited one rests
    for its response's Retry-After."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.next = 0
        self.resting: dict[str, float] = {}  # key -> until (loop time)

    def pick(self, now: float, avoid: set[str]) -> str | None:
        """The next key in turn that is neither resting nor in `avoid`; else the one resting least."""
        if not self.keys:
            return None
        count = len(self.keys)
        for step in range(count):
            key = self.keys[(self.next + step) % count]
            if key not in avoid and self.resting.get(key, 0.0) <= now:
                self.next = (self.next + step + 1) % count
                return key
        fresh = [k for k in self.keys if k not in avoid] or list(self.keys)
        return min(fresh, key=lambda k: self.resting.get(k, 0.0))

    def penalize(self, key: str, error: UpstreamError, now: float) -> None:
        if error.reason is Reason.AUTH_ERROR:
            self.resting[key] = now + SET_ASIDE_SECONDS
        else:
            self.resting[key] = now + (error.retry_after if error.retry_after is not None else REST_SECONDS)

    def another(self, now: float, avoid: set[str]) -> bool:
        return any(k not in avoid and self.resting.get(k, 0.0) <= now for k in self.keys)


class BreakerState(IntEnum):
    """The values of `gateway_breaker_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class Admission:
    """A breaker's answer to "may a request go?" (falsy: no). `probe` numbers the half-open probe."""

    allowed: bool
    probe: int = 0  # this request is probe number `probe` (0: not a probe); it ends in an outcome or a release

    def __bool__(self) -> bool:
        return self.allowed


REFUSED = Admission(False)
PASS = Admission(True)


class Breaker:
    """Closed: requests flow and health failures are counted. `failures` of them within `window` seconds
    open it: the connection is skipped until `cooldown` has passed. Then half-open: one probe request is
    let through; its success closes the breaker, its failure re-opens it."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.until = 0.0  # loop time the open state ends
        self.probe = 0  # the number of the half-open probe in flight; 0: none
        self._probes = 0
        self._failures: deque[float] = deque()

    def state_at(self, now: float) -> BreakerState:
        if self.state is BreakerState.OPEN and now >= self.until:
            return BreakerState.HALF_OPEN
        return self.state

    def admit(self, now: float) -> Admission:
        """Whether a request may be sent now, and whether it is the half-open probe."""
        state = self.state_at(now)
        if state is BreakerState.CLOSED:
            return PASS
        if state is BreakerState.OPEN or self.probe:
            return REFUSED
        return self._new_probe()

    def force_probe(self, now: float) -> Admission:
        """Every candidate's breaker was open: this one, whose cooldown ends soonest, is probed early
        (or simply used, if another request closed it meanwhile)."""
        if self.state_at(now) is BreakerState.CLOSED:
            return PASS
        return self._new_probe()

    def _new_probe(self) -> Admission:
        self._probes += 1
        self.state, self.probe = BreakerState.HALF_OPEN, self._probes
        return Admission(True, self._probes)

    def record(self, reason: Reason, now: float) -> None:
        """An attempt's outcome. Key trouble is the key pool's business and says nothing either way."""
        if reason in HEALTH_FAILURES:
            self._failure(now)
        elif reason not in KEY_FAILURES:  # the connection answered (even a client error is an answer)
            self.state, self.probe = BreakerState.CLOSED, 0
            self._failures.clear()

    def release(self, admission: Admission) -> None:
        """An admitted request is done with this connection: if it was the probe still awaited (no outcome
        came: the client left, the connection was busy, the deadline passed), the next request may probe."""
        if admission.probe and admission.probe == self.probe:
            self.probe = 0

    def _failure(self, now: float) -> None:
        if self.settings.failures == 0:
            return
        if self.state is not BreakerState.CLOSED:  # a failed probe (or a late failure): open again
            self.state, self.probe = BreakerState.OPEN, 0
            self.until = max(self.until, now + self.settings.cooldown)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.settings.window:
            self._failures.popleft()
        if len(self._failures) >= self.settings.failures:
            self.state, self.until = BreakerState.OPEN, now + self.settings.cooldown
            self._failures.clear()


class Limiter:
    """At most `limit` requests in flight on a connection; a request waits a bounded time for a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._slots.release()


def retry_wait(error: UpstreamError, settings: RetrySettings, retries_done: int) -> float | None:
    """Seconds to wait before trying the same connection again, or None to move on. Only for answers
    that say "later" (429, 503, overloaded); the answer's own Retry-After is honoured, and a wait longer
    than `max_wait` is not worth it when another connection may answer now."""
    if retries_done >= settings.attempts:
        return None
    later = (
        error.reason is Reason.RATE_LIMITED or error.status in (503, 529) or "overloaded" in error.message.lower()
    )
    if not later:
        return None
    wait = error.retry_after if error.retry_after is not None else RETRY_BACKOFF * 2**retries_done
    return wait if wait <= settings.max_wait else None


class ConnectionState:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.identity = identity(connection)
        self.keys = KeyPool(connection.api_keys)
        self.breaker = Breaker(connection.reliability.breaker)
        limit = connection.reliability.max_concurrent
        self.limiter = Limiter(limit) if limit is not None else None


def identity(connection: Connection) -> tuple[object, ...]:
    """What must stay the same for a reloaded connection to keep its state."""
    return (connection.provider, connection.base_url, connection.api_keys, connection.reliability)


class ConnectionStates:
    """The state of every configured connection, by name, across configuration reloads."""

    def __init__(self) -> None:
        self.states: dict[str, ConnectionState] = {}

    def update(self, connections: Iterable[Connection]) -> dict[str, ConnectionState]:
        """The states for a new configuration: unchanged connections keep theirs, changed ones start
        afresh. A new dict each time, so a router still serving the old configuration keeps its own."""
        states = {}
        for connection in connections:
            state = self.states.get(connection.name)
            if state is None or state.identity != identity(connection):
                state = ConnectionState(connection)
            state.connection = connection
            states[connection.name] = state
        self.states = states
        return states

    def health(self, now: float) -> list[tuple[str, bool, BreakerState]]:
        """(name, up, breaker state) per connection: up when enabled and its breaker is not open."""
        out = []
        for name, state in self.states.items():
            breaker = state.breaker.state_at(now)
            out.append((name, state.connection.enabled and breaker is not BreakerState.OPEN, breaker))
        return out
