"""Planning: the ordered candidate connections for a requested model (aliases, routes, globs), each
marked with why it is skipped if it must be."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping

from ..config.model import GLOB_CHARS, Config, Connection
from ..contracts import Candidate, Relay
from ..errors import GatewayError, Reason
from ..formats.canonical import Features


def route_targets(routes: Mapping[str, list[str]], model: str) -> list[str] | None:
    """Exact route names win over globs; among globs the first in config order wins."""
    exact = routes.get(model)
    if exact is not None:
        return exact
    for pattern, compiled in _globs(tuple(routes)):
        if compiled.match(model):
            return routes[pattern]
    return None


@functools.lru_cache(maxsize=16)
def _globs(patterns: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    """The glob patterns among the routes, compiled once per configuration."""
    return [(p, re.compile(fnmatch.translate(p))) for p in patterns if GLOB_CHARS.intersection(p)]


def no_connection_message(config: Config) -> str:
    why = "; ".join(f"{c.name}: {c.disabled_reason}" for c in config.connections)
    return f"No connection is enabled ({why or 'none is configured'}). Set the missing variables and restart."


def _pool(config: Config, model: str) -> list[tuple[Connection, str | None]]:
    """(connection, upstream model or None when it does not serve `model`) in order: an alias's list
    (with its model rewriting), else a matching route's list, else every enabled connection."""
    alias = config.aliases.get(model)
    if alias is not None:
        return [(config.connection(name), upstream) for name, upstream in alias]
    names = route_targets(config.routes, model)
    if names is None:
        connections = [c for c in config.connections if c.enabled]
        if not connections:
            raise GatewayError(503, no_connection_message(config), code="no_connection")
    else:
        connections = [config.connection(n) for n in names]
    return [(c, c.upstream_model(model)) for c in connections]


def plan(config: Config, model: str, relay: Relay) -> list[Candidate]:
    """The ordered candidates for `model`, each marked with why it is skipped if it must be."""
    candidates: list[Candidate] = []
    needs: Features | None = None
    for connection, upstream in _pool(config, model):
        if upstream is None:
            continue
        candidate = Candidate(connection, upstream)
        if not connection.enabled:
            candidate.skip = Reason.DISABLED
        elif not relay.serves(connection):
            candidate.skip = Reason.UNSUPPORTED
        elif connection.capabilities.restricted:
            needs = needs or relay.features()
            missing = needs.missing(connection.capabilities)
            if missing:  # never send a request whose features the connection would drop
                candidate.skip, candidate.why = Reason.UNSUPPORTED, f"no support for {', '.join(missing)}"
        candidates.append(candidate)
    if relay.same_model_only:
        first = next((c.model for c in candidates if c.skip is None), None)
        candidates = [c for c in candidates if c.skip is None and c.model == first]
    if not candidates:
        raise GatewayError(
            404, f"The model {model!r} is not served by any connection.", code="model_not_found", param="model"
        )
    return candidates
