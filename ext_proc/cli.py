"""The ``ext-proc`` command: ``serve`` the ext_proc server, ``keygen`` a seal key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ext_proc.config import Config, ConfigError, new_seal_key


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ext-proc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server")
    serve.add_argument("--config", type=Path, help="TOML config file (or EXT_PROC_CONFIG)")
    serve.add_argument("--listen", help="HOST:PORT or unix:PATH (default 127.0.0.1:50051; or EXT_PROC_LISTEN)")
    serve.add_argument("--seal-key-file", type=Path, help="seal keys, one per line, first seals")
    serve.add_argument("--server-key-file", type=Path, help="the sidecar's own Anthropic credential")

    sub.add_parser("keygen", help="print a new random seal key")

    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(new_seal_key())
        return 0
    try:
        config = Config.load(
            args.config,
            os.environ,
            {
                "listen": args.listen,
                "seal_key_file": args.seal_key_file,
                "server_credential_file": args.server_key_file,
            },
        )
    except ConfigError as exc:
        print(f"ext-proc: configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    from ext_proc.server import Runtime, Server

    server = Server(Runtime.from_config(config))

    def ready(address: str) -> None:
        print(f"serving ext_proc on {address}", flush=True)

    try:
        await server.run_until_signalled(ready)
    except OSError as exc:
        print(f"ext-proc: {exc}", file=sys.stderr)
        return 1
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")


if __name__ == "__main__":
    sys.exit(main())
