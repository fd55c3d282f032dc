"""The model catalog: every name the gateway serves, for `GET /v1/models` and `python -m gateway models`.

A connection that passes model names through (no `model`, no `models` mapping) is served by whatever
its provider lists, so its live list (`GET {base}/models`) is asked for, cached for `catalog.ttl`, and
refreshed in the background before it expires. A listing call is bounded by `catalog.timeout`; a
connection whose listing failed cools down for `catalog.cooldown` and its last good list (or its
curated one) is served meanwhile: the endpoint never hangs on a dead upstream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .config.model import GLOB_CHARS, CatalogConfig, Config, Connection
from .errors import UpstreamError
from .formats import registry
from .transport import Transport, scrub_text

log = logging.getLogger("gateway.catalog")

GATEWAY_OWNER = "gateway"  # the owner of alias and route names


async def list_models(transport: Transport, connection: Connection, timeout: float) -> list[str]:
    """The provider's live list of models; raises UpstreamError."""
    api = registry.APIS[connection.dialect]
    path, headers = api.listing_call(connection)
    body = await transport.fetch(connection, "GET", path, key=connection.api_key, timeout=timeout, headers=headers)
    return api.listed_ids(body)


def passes_names_through(connection: Connection) -> bool:
    """Whether the names a connection serves are the provider's own (so its listing says what they are)."""
    return connection.model is None and not connection.models


def _identity(connection: Connection) -> tuple[object, ...]:
    return (connection.provider, connection.base_url, connection.api_keys, connection.listing)


@dataclass(slots=True)
class Listing:
    """One connection's cached list."""

    connection: Connection
    models: tuple[str, ...] | None = None  # the last good live list
    expires: float = 0.0
    cooling_until: float = 0.0
    error: str | None = None
    fetching: asyncio.Task[None] | None = field(default=None, repr=False)


class Catalog:
    def __init__(self, transport: Transport, settings: CatalogConfig) -> None:
        self.transport = transport
        self.settings = settings
        self.listings: dict[str, Listing] = {}
        self._wake = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None

    def configure(self, config: Config) -> None:
        """A new configuration: lists of unchanged connections are kept, others forgotten."""
        self.settings = config.catalog
        current = {c.name: c for c in config.connections}
        for name, listing in list(self.listings.items()):
            connection = current.get(name)
            if connection is None or _identity(connection) != _identity(listing.connection):
                if listing.fetching is not None:
                    listing.fetching.cancel()
                del self.listings[name]
            else:
                listing.connection = connection
        self._wake.set()

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_ahead())

    async def close(self) -> None:
        tasks = [listing.fetching for listing in self.listings.values() if listing.fetching is not None]
        if self._refresher is not None:
            tasks.append(self._refresher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def models(self, config: Config) -> list[tuple[str, str]]:
        """(id, owner) for every name the gateway serves: connections' names (live, mapped or curated)
        in priority order, then aliases, then exact route names; each id once."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        never_listed = []
        for connection in config.connections:
            if connection.enabled and connection.listing and passes_names_through(connection):
                listing = self._listing(connection)
                if listing.expires <= now and listing.cooling_until <= now:
                    task = self._fetch(listing)
                    if listing.models is None:  # nothing to serve yet: wait for it, within the bound
                        never_listed.append(task)
        if never_listed:
            await asyncio.wait(never_listed, timeout=self.settings.timeout)
        self._wake.set()
        seen: dict[str, str] = {}
        for connection in config.connections:
            if connection.enabled:
                for name in self.names_of(connection):
                    seen.setdefault(name, connection.name)
        for name in (*config.aliases, *config.routes):
            if not GLOB_CHARS.intersection(name):
                seen.setdefault(name, GATEWAY_OWNER)
        return list(seen.items())

    def names_of(self, connection: Connection) -> tuple[str, ...]:
        if not passes_names_through(connection):
            return tuple(n for n in (connection.model, *connection.models) if n)
        listing = self.listings.get(connection.name)
        if connection.listing and listing is not None and listing.models is not None:
            return listing.models
        return connection.listed_models

    def _listing(self, connection: Connection) -> Listing:
        listing = self.listings.get(connection.name)
        if listing is None or _identity(listing.connection) != _identity(connection):
            listing = self.listings[connection.name] = Listing(connection)
        return listing

    def _fetch(self, listing: Listing) -> asyncio.Task[None]:
        """The listing call in flight for a connection (one at a time), started if none is."""
        if listing.fetching is None or listing.fetching.done():
            listing.fetching = asyncio.create_task(self._update(listing))
        return listing.fetching

    async def _update(self, listing: Listing) -> None:
        loop = asyncio.get_running_loop()
        connection = listing.connection
        try:
            models = await list_models(self.transport, connection, self.settings.timeout)
        except UpstreamError as err:
            listing.cooling_until = loop.time() + self.settings.cooldown
            listing.error = f"{err.reason}: {scrub_text(err.message, connection)}"
            self._wake.set()
            log.warning(
                "model listing of %s failed (%s); serving its %s list for %gs",
                connection.name,
                listing.error,
                "last good" if listing.models is not None else "curated",
                self.settings.cooldown,
            )
            return
        listing.models = tuple(models)
        listing.expires = loop.time() + self.settings.ttl
        listing.error = None
        self._wake.set()  # the background refresher plans around the new expiry

    def _due(self, listing: Listing) -> float:
        ahead = min(self.settings.refresh_ahead, self.settings.ttl / 2)
        if listing.models is None:
            return listing.cooling_until
        return max(listing.expires - ahead, listing.cooling_until)

    async def _refresh_ahead(self) -> None:
        """Background: each list is fetched again shortly before it expires (or once its cooldown ends),
        so clients are served from the cache. Only lists that were asked for are kept fresh."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            idle = [entry for entry in self.listings.values() if entry.fetching is None or entry.fetching.done()]
            due = [listing for listing in idle if self._due(listing) <= now]
            if due:
                await asyncio.wait([self._fetch(listing) for listing in due])
                continue
            upcoming = min((self._due(listing) for listing in idle), default=None)
            try:
                async with asyncio.timeout(None if upcoming is None else upcoming - now):
                    await self._wake.wait()
            except TimeoutError:
                pass
