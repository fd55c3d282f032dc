"""Command line: `python -m gateway serve [--config PATH] [--host H] [--port N]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from .config import ConfigError, load_config
from .logs import setup_logging

DEFAULT_CONFIG = os.environ.get("GATEWAY_CONFIG", "config/gateway.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description="An AI gateway: one endpoint, every provider."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--log-level", help="overrides logging.level (debug, info, warning, error)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # until the config is read
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging, args.log_level)
    from .app import serve as run_server

    host = args.host or config.server.host
    port = args.port or config.server.port
    try:
        uvloop.run(run_server(config, host, port))  # a faster event loop: the gateway's own cost is the product
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
