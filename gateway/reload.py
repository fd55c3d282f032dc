"""Configuration reload without a restart: on SIGHUP, on `POST /admin/reload`, and when the config file
changes (polled every `server.watch_interval` seconds).

The new file is read and validated in full before anything changes; an invalid one is rejected with a
log line and the running configuration stays. A valid one is swapped in at once (`Gateway.apply`):
requests already routed finish on the old configuration, connections that did not change keep their
breakers, key state and cached model lists, and the one upstream session serves throughout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import operator
import os
from pathlib import Path

from aiohttp import web

from .config.load import load_config
from .config.model import Config, ConfigError
from .runtime import Gateway

log = logging.getLogger("gateway.reload")

# Settings bound when the process started (listeners, the parser's header limit, the store file):
# a reload that changes them is applied otherwise, and says these wait for a restart.
RESTART_ONLY = (
    ("server.host", lambda c: c.server.host),
    ("server.port", lambda c: c.server.port),
    ("server.max_body_bytes", lambda c: c.server.max_body_bytes),
    ("server.keepalive_timeout", operator.attrgetter("server.keepalive_timeout")),
    *((f"limits.{key}", operator.attrgetter(f"limits.{key}")) for key in (
        "max_header_bytes", "header_timeout", "body_timeout", "body_min_rate", "max_header_count",
        "max_header_line_bytes", "max_connections")),  # the client side: gateway/server.py
    ("store", lambda c: c.store),
    ("proxy", lambda c: c.proxy),
    ("data_dir", lambda c: c.data_dir),
)


class ConfigWatcher:
    """Reloads one gateway's configuration from its file."""

    def __init__(self, gateway: Gateway, path: str | os.PathLike[str]) -> None:
        self.gateway = gateway
        self.path = Path(path)
        self.loaded_digest = self._digest()  # the file as last read (valid or not)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    async def reload(self, reason: str) -> str | None:
        """Read, validate, apply. Returns None on success, else the error (the old configuration stays)."""
        async with self._lock:
            self.loaded_digest = self._digest()
            try:
                config = await asyncio.to_thread(load_config, self.path)  # stored keys may be decrypted
            except ConfigError as exc:
                log.error("config reload (%s) rejected; the running configuration stays: %s", reason, exc)
                return str(exc)
            except Exception as exc:  # nothing a file holds may take the gateway down
                log.exception("config reload (%s) failed; the running configuration stays", reason)
                return f"{self.path}: could not be loaded ({type(exc).__name__})"
            old = self.gateway.config
            self.gateway.apply(config)
            log.info("config reloaded (%s): %s", reason, describe_change(old, config))
            return None

    async def start(self) -> None:
        interval = self.gateway.config.server.watch_interval
        if interval > 0:
            self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        """Polling: portable, and a config file changes rarely. Only a change of content reloads."""
        while True:
            await asyncio.sleep(self.gateway.config.server.watch_interval or 1.0)
            if self.gateway.config.server.watch_interval <= 0:
                continue
            try:
                digest = await asyncio.to_thread(self._digest)
                if digest is not None and digest != self.loaded_digest:
                    await self.reload("the file changed")
            except Exception:  # the watcher outlives whatever one reload ran into
                log.exception("config reload failed; the running configuration stays")


def describe_change(old: Config, new: Config) -> str:
    before = {c.name: c for c in old.connections}
    after = {c.name: c for c in new.connections}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    parts = [f"{label} {', '.join(names)}" for label, names in (("added", added), ("removed", removed),
             ("changed", changed)) if names]  # fmt: skip
    restart = [name for name, value in RESTART_ONLY if value(old) != value(new)]
    if restart:
        parts.append(f"these take effect after a restart: {', '.join(restart)}")
    return "; ".join(parts) or "no connection changed"


WATCHER = web.AppKey("config_watcher", ConfigWatcher)  # present when the configuration came from a file
