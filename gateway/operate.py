"""`python -m gateway test` and `python -m gateway models`: the operator's checks, without a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson

from .catalog import Catalog
from .config.load import load_config
from .config.model import Config, ConfigError
from .probe import ProbeResult, probe_connections
from .transport import Transport

T = TypeVar("T")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "test":
        known = [c.name for c in config.connections]
        unknown = [name for name in args.connections if name not in known]
        if unknown:
            print(f"no such connection: {', '.join(unknown)} (configured: {', '.join(known)})", file=sys.stderr)
            return 2
        names = args.connections or known
        results = asyncio.run(_with_transport(lambda t: probe_connections(t, config, names, args.model)))
        _print_results(results, args.json)
        return 0 if all(r.status == "ok" for r in results) else 1
    models = asyncio.run(_with_transport(lambda t: _catalog(t, config)))
    if args.json:
        data = [{"id": model_id, "object": "model", "owned_by": owner} for model_id, owner in models]
        print(orjson.dumps({"object": "list", "data": data}, option=orjson.OPT_INDENT_2).decode())
    else:
        width = max((len(model_id) for model_id, _ in models), default=0)
        for model_id, owner in models:
            print(f"{model_id:<{width}}  {owner}")
    return 0


async def _with_transport(work: Callable[[Transport], Awaitable[T]]) -> T:
    transport = Transport()
    await transport.start()
    try:
        return await work(transport)
    finally:
        await transport.close()


async def _catalog(transport: Transport, config: Config) -> list[tuple[str, str]]:
    catalog = Catalog(transport, config.catalog)
    try:
        return await catalog.models(config)
    finally:
        await catalog.close()


def _print_results(results: list[ProbeResult], as_json: bool) -> None:
    if as_json:
        for result in results:
            print(orjson.dumps(result.as_dict()).decode())
        return
    width = max(len(r.connection) for r in results) if results else 0
    for r in results:
        latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
        listing = f"listed {r.listed_models}" if r.listed_models is not None else f"listing {r.listing or 'n/a'}"
        line = f"{r.connection:<{width}}  {r.status:<13} {latency:>9}  {r.model or '-'}  ({listing})"
        print(line + (f"  {r.detail}" if r.detail else ""))
