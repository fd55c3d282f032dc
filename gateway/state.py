"""What the aiohttp app carries: the loaded configuration and the objects built from it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .auth import ClientAuth
from .config import Config
from .metrics import Metrics
from .record import RequestRecord
from .router import Router
from .store import ResponseStore
from .transport import Transport


@dataclass(slots=True)
class Gateway:
    config: Config
    transport: Transport
    router: Router
    auth: ClientAuth
    metrics: Metrics
    store: ResponseStore
    started_at: int  # unix time, the `created` of listed models
    draining: bool = False  # set on SIGTERM: readiness fails while in-flight work finishes


GATEWAY = web.AppKey("gateway", Gateway)
RECORD = web.RequestKey("record", RequestRecord)
