"""Connection state in this process: each connection's key pool, circuit breaker and concurrency
limit, kept across configuration reloads for connections that did not change.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence

from ..config.model import BreakerSettings, Connection
from ..contracts import Candidate
from ..errors import Reason, UpstreamError
from .base import (
    HEALTH_FAILURES,
    KEY_FAILURES,
    MAY_PROBE,
    PASS,
    REFUSED,
    Admission,
    BreakerState,
    ConnectionStates,
)

SET_ASIDE_SECONDS = 300.0  # a key refused with 401/403
REST_SECONDS = 5.0  # a key rate limited without a Retry-After


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
        """Whether a request may be sent now, and whether it is the half-open probe (then claimed)."""
        admission = self.plan(now)
        return self._new_probe() if admission is MAY_PROBE else admission

    def plan(self, now: float) -> Admission:
        """`admit` without claiming: PASS, REFUSED, or MAY_PROBE (half-open, no probe out yet)."""
        state = self.state_at(now)
        if state is BreakerState.CLOSED:
            return PASS
        if state is BreakerState.OPEN or self.probe:
            return REFUSED
        return MAY_PROBE

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




class MemoryStates(ConnectionStates):
    """Every configured connection's state, by name, in this process."""

    __slots__ = ("states",)

    def __init__(self, states: dict[str, ConnectionState] | None = None) -> None:
        self.states: dict[str, ConnectionState] = states if states is not None else {}

    def update(self, connections: Iterable[Connection]) -> MemoryStates:
        """Unchanged connections keep their state, changed ones start afresh. A new view each time, so
        a router still serving the old configuration keeps its own."""
        states = {}
        for connection in connections:
            state = self.states.get(connection.name)
            if state is None or state.identity != identity(connection):
                state = ConnectionState(connection)
            state.connection = connection
            states[connection.name] = state
        self.states = states
        return MemoryStates(states)

    async def admit(self, candidates: Sequence[Candidate], now: float) -> list[Admission]:
        states = self.states
        return [states[c.connection.name].breaker.plan(now) for c in candidates]

    async def claim_probe(self, name: str, now: float, *, forced: bool = False) -> Admission:
        breaker = self.states[name].breaker
        return breaker.force_probe(now) if forced else breaker.admit(now)

    async def release(self, name: str, admission: Admission) -> None:
        self.states[name].breaker.release(admission)

    async def record(self, name: str, reason: Reason, now: float) -> None:
        self.states[name].breaker.record(reason, now)

    def breaker(self, name: str, now: float) -> BreakerState:
        return self.states[name].breaker.state_at(now)

    def reopens_at(self, name: str) -> float:
        return self.states[name].breaker.until

    def pick_key(self, name: str, now: float, avoid: set[str]) -> str | None:
        return self.states[name].keys.pick(now, avoid)

    async def penalize_key(self, name: str, key: str, error: UpstreamError, now: float) -> None:
        self.states[name].keys.penalize(key, error, now)

    def has_another_key(self, name: str, now: float, avoid: set[str]) -> bool:
        return self.states[name].keys.another(now, avoid)

    def concurrency_limit(self, name: str) -> int | None:
        limiter = self.states[name].limiter
        return limiter.limit if limiter is not None else None

    async def acquire_slot(self, name: str, wait: float) -> bool:
        limiter = self.states[name].limiter
        return True if limiter is None else await limiter.acquire(wait)

    def release_slot(self, name: str) -> None:
        limiter = self.states[name].limiter
        if limiter is not None:
            limiter.release()

    def health(self, now: float) -> list[tuple[str, bool, BreakerState]]:
        out = []
        for name, state in self.states.items():
            breaker = state.breaker.state_at(now)
            out.append((name, state.connection.enabled and breaker is not BreakerState.OPEN, breaker))
        return out
