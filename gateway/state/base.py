"""What routing asks of per-connection state (breaker, key pool, concurrency limit), behind one
interface, so that a shared implementation (Redis, for many replicas) can replace the in-process one
(`memory.py`) without touching the engine.

Reads that every attempt makes (which key, is the breaker open) are synchronous: a shared
implementation answers them from a local copy it keeps current. What changes state is async. And
admission is asked once for all of a request's candidates, so a shared implementation needs one
round trip per request, not one per candidate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from ..config.model import Connection
from ..contracts import Candidate
from ..errors import Reason, UpstreamError

# Failures that say something about the key rather than the connection: another key may serve.
KEY_FAILURES = frozenset({Reason.RATE_LIMITED, Reason.AUTH_ERROR})
# Failures that say the connection itself is unwell: they count towards opening its breaker.
HEALTH_FAILURES = frozenset({Reason.CONNECT_ERROR, Reason.TIMEOUT, Reason.SERVER_ERROR, Reason.BAD_RESPONSE})


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
    half_open: bool = False  # planned while half-open: `claim_probe` when the candidate is reached

    def __bool__(self) -> bool:
        return self.allowed


REFUSED = Admission(False)
PASS = Admission(True)
MAY_PROBE = Admission(True, half_open=True)


class ConnectionStates(ABC):
    """The state of one configuration's connections, by name. `update` makes the view of the next
    configuration: connections that did not change keep their state."""

    @abstractmethod
    def update(self, connections: Iterable[Connection]) -> ConnectionStates:
        """A view for a new configuration (the old view keeps serving requests routed on it)."""

    # --- admission ---

    @abstractmethod
    async def admit(self, candidates: Sequence[Candidate], now: float) -> list[Admission]:
        """Breaker admission for each candidate, in one call: PASS (closed), REFUSED (open), or
        MAY_PROBE (half-open: `claim_probe` when the candidate is reached, if it is)."""

    @abstractmethod
    async def claim_probe(self, name: str, now: float, *, forced: bool = False) -> Admission:
        """The half-open probe of `name`, or REFUSED when another request holds it. `forced`: every
        candidate's breaker was open and this one's cooldown ends soonest: probed early (or simply
        used, if another request closed it meanwhile)."""

    @abstractmethod
    async def release(self, name: str, admission: Admission) -> None:
        """An admitted request is done with `name`: a probe that ended without an outcome (the client
        left, the connection was busy, the deadline passed) lets the next request probe."""

    @abstractmethod
    async def record(self, name: str, reason: Reason, now: float) -> None:
        """An attempt's outcome, for the breaker: health failures count towards opening it, an answer
        closes it, key trouble says nothing either way."""

    @abstractmethod
    def breaker(self, name: str, now: float) -> BreakerState:
        """The breaker's state now."""

    @abstractmethod
    def reopens_at(self, name: str) -> float:
        """Loop time the open state of `name` ends."""

    # --- keys ---

    @abstractmethod
    def pick_key(self, name: str, now: float, avoid: set[str]) -> str | None:
        """The next key in turn that is neither resting nor in `avoid`; else the one resting least;
        None for a connection without keys."""

    @abstractmethod
    async def penalize_key(self, name: str, key: str, error: UpstreamError, now: float) -> None:
        """A key refused (set aside) or rate limited (rests for the answer's Retry-After)."""

    @abstractmethod
    def has_another_key(self, name: str, now: float, avoid: set[str]) -> bool:
        """Whether a key not in `avoid` is ready now."""

    # --- concurrency ---

    @abstractmethod
    def concurrency_limit(self, name: str) -> int | None:
        """`max_concurrent` of `name`, or None when it has none."""

    @abstractmethod
    async def acquire_slot(self, name: str, wait: float) -> bool:
        """A request slot on `name`, waiting at most `wait` seconds; False: the connection is busy."""

    @abstractmethod
    def release_slot(self, name: str) -> None:
        """The slot an `acquire_slot` gave is free again."""

    # --- reading ---

    @abstractmethod
    def health(self, now: float) -> list[tuple[str, bool, BreakerState]]:
        """(name, up, breaker state) per connection: up when enabled and its breaker is not open."""
