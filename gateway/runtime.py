"""What the aiohttp app carries: the loaded configuration and the objects built from it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from .auth import ClientAuth
from .catalog import Catalog
from .config.model import Config
from .contracts import UpstreamFormat
from .formats import registry
from .logs import log_request
from .metrics import Metrics
from .record import RequestRecord
from .routing.engine import Router
from .state.base import ConnectionStates
from .store import ResponseStore
from .transport import Transport


@dataclass(slots=True)
class Gateway:
    """The process's objects. `config`, `router` and `auth` belong to one configuration and are swapped
    together by `apply`; the rest (sessions, stores, connection states, metrics) lives as long as the process."""

    config: Config
    transport: Transport
    metrics: Metrics
    store: ResponseStore
    catalog: Catalog
    states: ConnectionStates
    started_at: int  # unix time, the `created` of listed models
    router: Router = field(init=False)
    auth: ClientAuth = field(init=False)
    upstreams: list[UpstreamFormat] = field(init=False)  # how translated requests reach connections
    draining: bool = False  # set on SIGTERM: readiness fails while in-flight work finishes

    def __post_init__(self) -> None:
        self.metrics.health = lambda: self.states.health(asyncio.get_running_loop().time())
        self.apply(self.config)

    def begin(self, record: RequestRecord) -> None:
        """A request is in progress (the inflight gauge); `finish` must follow."""
        self.metrics.inflight.add((record.route,), 1)

    def finish(self, record: RequestRecord, response: web.StreamResponse | None) -> None:
        """The bookkeeping every request ends with: its status (499: the client went away), metrics,
        the log line. Runs after the client has its answer."""
        self.metrics.inflight.add((record.route,), -1)
        record.status = response.status if response is not None else 499
        duration = asyncio.get_running_loop().time() - record.started
        self.metrics.observe(record, duration)
        log_request(record, duration)

    def apply(self, config: Config) -> None:
        """Switch to `config` in one step (nothing here awaits): requests already routed finish on the
        router of the old one; connections that did not change keep their breakers and key state."""
        router = Router(config, self.transport, self.states.update(config.connections), registry.APIS)
        self.config, self.router, self.auth = config, router, ClientAuth(config.auth.client_keys)
        self.upstreams = registry.upstream_formats(config.anthropic_sampling_rules)
        self.catalog.configure(config)


GATEWAY = web.AppKey("gateway", Gateway)
RECORD = web.RequestKey("record", RequestRecord)
