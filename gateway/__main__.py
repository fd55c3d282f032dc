"""Command line: `python -m gateway serve|keys ...`. Thin: parses arguments, calls in."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .config.load import ca_location, load_config, store_location
from .config.model import ConfigError

DEFAULT_CONFIG = os.environ.get("GATEWAY_CONFIG", "config/gateway.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description="An AI gateway: one endpoint, every provider."
    )
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", parents=[config], help="run the gateway")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--log-level", help="overrides logging.level (debug, info, warning, error)")
    keys = commands.add_parser("keys", help="the encrypted key store (provider keys out of the config file)")
    actions = keys.add_subparsers(dest="action", required=True)
    helps = {
        "set": "store a secret (read from stdin, or a hidden prompt; never from the command line)",
        "list": "entry names, dates and fingerprints (never the secrets)",
        "delete": "remove an entry",
        "rotate-master": "re-encrypt every entry under a new master secret (from stdin, or generated)",
    }
    for action, text in helps.items():
        sub = actions.add_parser(action, parents=[config], help=text)
        if action in ("set", "delete"):
            sub.add_argument("name", help="lowercase letters, digits, - and _, e.g. groq_groq-main")
    probe = commands.add_parser(
        "test", parents=[config], help="prove connections work: list models, then one tiny generation each"
    )
    probe.add_argument("connections", nargs="*", metavar="CONNECTION", help="connection names (default: all)")
    probe.add_argument("--model", help="the model to ask (default: the connection's own, or one it lists)")
    probe.add_argument("--json", action="store_true", help="one JSON object per connection")
    models = commands.add_parser("models", parents=[config], help="the model catalog, as GET /v1/models lists it")
    models.add_argument("--json", action="store_true", help="print the OpenAI-shaped list")
    ca = commands.add_parser("ca", help="the CA of the HTTPS proxy (proxy.ca_dir, default {data_dir}/ca)")
    ca_actions = ca.add_subparsers(dest="action", required=True)
    ca_actions.add_parser("init", parents=[config], help="create the CA (an existing one is kept)")
    export = ca_actions.add_parser("export", parents=[config], help="print the CA certificate (PEM)")
    export.add_argument("--bundle", action="store_true", help="the system trust store plus the gateway CA")
    args = parser.parse_args(argv)
    if args.command == "ca":
        from .ca import run_cli

        try:
            ca_dir = ca_location(args.config)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        return run_cli(args.action, ca_dir, getattr(args, "bundle", False))
    if args.command in ("test", "models"):
        from .operate import run

        return run(args)
    if args.command == "keys":
        from .keys_cli import run

        try:
            data_dir, key_file = store_location(args.config)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        return run(args.action, getattr(args, "name", None), data_dir, key_file)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from .app import serve as run_server
    from .logs import setup_logging
    from .proxy.listener import ProxyStartError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # until the config is read
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging, args.log_level)
    host = args.host or config.server.host
    port = args.port or config.server.port
    try:
        # uvloop: a faster event loop, since the gateway's own cost is the product
        uvloop.run(run_server(config, host, port, args.config))
    except ProxyStartError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
