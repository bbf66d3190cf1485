"""The ``ext-proc`` command.

- ``up``: run the whole gateway (Envoy with both legs, and the ext_proc server);
- ``serve``: run only the ext_proc gRPC server (when Envoy is run separately, e.g. as a Kubernetes sidecar);
- ``envoy-config``: print the Envoy bootstrap for given addresses;
- ``check``: validate a configuration (and optionally an Envoy config) without serving;
- ``keygen``: print a new seal key.

Every setting (``ext_proc.config.Config``, docs/configuration.md) is a config-file key, an ``EXT_PROC_*``
environment variable and, in the commands that use it, a flag, all named by one rule: ``egress_listen``,
``EXT_PROC_EGRESS_LISTEN``, ``--egress-listen``. A flag wins over the environment, which wins over the file. What a
command works on (the file ``check`` judges, the address ``health`` asks) is a flag of that command only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from ext_proc.audit import configure_logging
from ext_proc.config import ENV_PREFIX, Config, ConfigError, default_socket, shown
from ext_proc.envoy import EnvoyNotFound, Layout, find_envoy
from ext_proc.secrets import (
    Secrets,
    default_egress_token_path,
    egress_token_file,
    load_secrets,
    new_egress_token,
    new_seal_key,
    reread_secret,
)


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags (`--server-credential KEY` is not `--server-credential-file`), and no credential-shaped
    word of the command line repeated in an error."""

    def __init__(self, **kwargs: Any) -> None:  # argparse makes each command's parser with keywords only
        super().__init__(**{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> NoReturn:
        super().error(re.sub(r"sk-[A-Za-z0-9_-]+", "sk-…(redacted)", message))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ext-proc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _settings(sub, "up", "run Envoy (both legs) and the ext_proc server together")
    _settings(sub, "serve", "run only the ext_proc gRPC server")
    check = _settings(sub, "check", "validate the configuration (and an Envoy config) without serving")
    check.add_argument("--envoy-config", help="an Envoy bootstrap to validate with `envoy --mode validate`")
    who = ("who runs --litellm-config: 'up' (`up --litellm-config`, which sets what the gateway needs and says so) "
           "or 'litellm' (a LiteLLM you run, which must hold those settings itself)")  # fmt: skip
    check.add_argument("--run-by", default="up", help=who)
    envoy_config = _settings(sub, "envoy-config", "print the Envoy bootstrap for both legs")
    envoy_config.add_argument(
        "--all", metavar="DEPLOY_DIR", help="write every Envoy config the repository ships under DEPLOY_DIR instead"
    )
    health = sub.add_parser("health", help="ask a running server's gRPC health service; exit 0 when SERVING")
    health.add_argument("--address", help="the server's address, unix:PATH or HOST:PORT")
    keygen = sub.add_parser("keygen", help="print a new random seal key")
    keygen.add_argument("--egress-token", action="store_true", help="print a new egress token instead")
    return parser


def _settings(sub: argparse._SubParsersAction[_Parser], command: str, summary: str) -> argparse.ArgumentParser:
    """``command``'s parser, with a flag for each setting it uses, named by the one rule (docs/configuration.md)."""
    parser = sub.add_parser(command, help=summary)
    parser.add_argument("--config", help=f"TOML config file; env {ENV_PREFIX}CONFIG")
    for f in dataclasses.fields(Config):
        if command not in f.metadata["commands"]:
            continue
        flag, env = "--" + f.name.replace("_", "-"), ENV_PREFIX + f.name.upper()
        default = f"; default {shown(f.default)}" if shown(f.default) else ""
        help = f"{f.metadata['help']} (env {env}{default})"  # no % in any: each command's --help is tested
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help)
        elif f.type == "tuple[str, ...]":
            parser.add_argument(flag, action="append", help=help)
        else:
            parser.add_argument(flag, help=help)
    return parser


def _config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """The one Config: defaults < the file < the environment < this command's flags; validated by the caller, once
    it knows which settings the command uses."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    return Config.load(Path(args.config) if args.config else None, env, flags, validate=False)


# gRPC's EventEngine experiments (on by default in grpcio 1.85) hand each call across a pool of threads: measured
# with the bench, twice the context switches per decision and 10-20 % more server CPU per request than gRPC's
# own polling in the grpc.aio poller thread (docs/performance.md). Set before gRPC starts; an operator's own
# GRPC_EXPERIMENTS wins.
GRPC_EXPERIMENTS = (
    "-event_engine_listener,-event_engine_for_all_other_endpoints,-event_engine_callback_cq,-event_engine_client"
)


# Spellings of earlier releases, each of which meant two things: mapped to the one name, with a note on stderr.
# (command or "*", old flag, new flag); and old environment variables, by the commands that read them.
RENAMED_FLAGS = (
    ("*", "--server-key-file", "--server-credential-file"),
    ("up", "--listen", "--ingress-listen"),
    ("envoy-config", "--listen", "--ingress-listen"),
    ("envoy-config", "--ext-proc", "--server-address"),
)
RENAMED_ENV = (
    ("*", "SERVER_KEY_FILE", "SERVER_CREDENTIAL_FILE"),
    ("*", "UPSTREAMS", "UPSTREAM"),
    ("*", "EXT_PROC", "SERVER_ADDRESS"),
    ("up", "LISTEN", "INGRESS_LISTEN"),
    ("envoy-config", "LISTEN", "INGRESS_LISTEN"),
)


def renamed(argv: Sequence[str], environ: MutableMapping[str, str]) -> tuple[list[str], list[str]]:
    """Map earlier spellings (flags in ``argv``, variables in ``environ``, changed in place) to today's names.

    Returns the new argv and one note per mapping made. A new name already given wins over the old one.
    """
    args = list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    notes = []
    for where, old, new in RENAMED_FLAGS:
        if where not in ("*", command):
            continue
        given_new = any(a == new or a.startswith(new + "=") for a in args)
        kept: list[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == old or arg.startswith(old + "="):
                if given_new:
                    if arg == old:
                        next(rest, None)  # its value, a separate argument
                    notes.append(f"{old} is now {new}, which is also given: {old} ignored")
                    continue
                arg = new + arg[len(old) :]
                notes.append(f"{old} is now {new}")
            kept.append(arg)
        args = kept
    for where, old, new in RENAMED_ENV:
        old_var, new_var = ENV_PREFIX + old, ENV_PREFIX + new
        if where in ("*", command) and old_var in environ and new_var not in environ:
            environ[new_var] = environ[old_var]
            if where != "*":
                del environ[old_var]  # in `up` it would otherwise also be read as the gRPC address
            notes.append(f"{old_var} is now {new_var}")
    return args, notes


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    # `up` forks only to exec Envoy and LiteLLM, neither of which uses this process's gRPC: its fork handlers have
    # nothing to do, and with the server's threads running they printed an info line at every start and could
    # break the child before its exec (seen in the tests' own process: the child died on gRPC's epoll error).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    argv, notes = renamed(sys.argv[1:] if argv is None else argv, os.environ)
    for note in notes:
        print(f"ext-proc: {note}; the old spelling will stop working in a later release", file=sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        print(new_egress_token() if args.egress_token else new_seal_key())
        return 0
    if args.command == "health":
        return _health(args.address or default_socket())
    if args.command == "envoy-config" and args.all:
        from ext_proc.deployed import write_all

        for path in write_all(Path(args.all)):
            print(f"wrote {path}")
        return 0
    # Earlier spellings this command has mapped are not read again; `up` runs its server on a private socket, so
    # `listen` (the gRPC address of `serve`) is not read there either.
    earlier = {ENV_PREFIX + old for where, old, _ in RENAMED_ENV if where in ("*", args.command)}
    env = {k: v for k, v in os.environ.items() if k not in earlier}
    try:
        config = _config(args, env)
        layout = config.layout() if args.command in ("up", "envoy-config") else None
        if args.command == "envoy-config" and layout is not None:
            from ext_proc.envoy import render

            sys.stdout.write(render(layout))
            return 0
        config = config.validated()
        if layout is not None and config.egress_token is None:
            # Made on first start (once the settings are accepted), at the path given or at the default place.
            config = replace(config, egress_token_file=egress_token_file(config.egress_token_file))
        secrets = load_secrets(config)  # read once, here, for whichever command runs
    except (ConfigError, ValueError, OSError) as exc:  # OSError: the egress token file cannot be made there
        print(f"ext-proc: configuration error: {exc}", file=sys.stderr)
        return 2
    litellm_config = Path(config.litellm_config) if config.litellm_config else None
    if args.command == "check":
        if args.run_by not in ("up", "litellm"):
            print(f"ext-proc: --run-by: 'up' or 'litellm', not {args.run_by!r}", file=sys.stderr)
            return 2
        code = _check(secrets, args.envoy_config, config.envoy or None)
        return code or (_check_litellm(config, secrets, litellm_config, args.run_by == "up") if litellm_config else 0)
    # _start runs until signalled, so no test calls it in-process; test_up.py's commands pin what it is given.
    return _start(config, secrets, layout, litellm_config)  # pragma: no mutate


# pragma: no mutate start (runs until a signal: tests/test_up.py, test_operations.py and tests/e2e run the commands)
def _start(config: Config, secrets: Secrets, layout: Layout | None, litellm_config: Path | None) -> int:
    """`serve`, or `up` when there is a layout: until signalled; a start that fails is one line and status 1."""
    configure_logging(config.log_level, config.log_format)
    try:
        if layout is not None:
            from ext_proc import up

            return _run(up.run(config, secrets, layout, config.envoy_log_level, config.envoy or None,
                               litellm_config), config.event_loop)  # fmt: skip
        return _run(_serve(config, secrets), config.event_loop)
    except (EnvoyNotFound, OSError, RuntimeError) as exc:
        print(f"ext-proc: {exc}", file=sys.stderr)
        return 1


async def _serve(config: Config, secrets: Secrets) -> int:
    from ext_proc.server import Server

    server = Server(config, secrets)

    def ready(address: str) -> None:
        metrics = f" metrics={server.metrics_at}" if server.metrics_at else ""
        print(f"serving ext_proc on {address}{metrics}", flush=True)

    await server.run_until_signalled(ready)
    return 0


def _run(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """uvloop by default: grpc.aio's per-call machinery runs on the event loop, and costs less on uvloop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            raise RuntimeError("event_loop 'uvloop' needs the uvloop package; install it or set 'asyncio'") from None
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


# pragma: no mutate end


# Below every shipped exec probe's timeoutSeconds (3): a server that accepts but never answers fails the probe with
# this command's own message, not kubelet's kill.
HEALTH_SECONDS = 2


def _health(address: str) -> int:
    """For exec probes: the server listens on a Unix socket that kubelet cannot reach."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_SECONDS)
                .status
            )
    except grpc.RpcError as exc:
        print(f"ext-proc: health check of {address} failed: {exc.code().name}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def _check(secrets: Secrets, envoy_config: str | None, envoy: str | None) -> int:
    keyring, credential = secrets.keyring, secrets.server_credential
    print(
        "config OK: seal keys "
        + (", ".join(keyring.key_ids) if keyring else "none (one is generated at start)")
        + "; server credential "
        + (credential.fingerprint() if credential else "none")
    )
    if not envoy_config:
        return 0
    try:
        binary = find_envoy(envoy)
    except EnvoyNotFound as exc:
        print(f"ext-proc: {exc}", file=sys.stderr)
        return 1
    result = subprocess.run(
        [str(binary), "--mode", "validate", "-c", envoy_config], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(f"ext-proc: Envoy rejects {envoy_config}:\n{(result.stderr or result.stdout).strip()}", file=sys.stderr)
        return 1
    print(f"envoy config OK: {envoy_config}")
    return 0


def _check_litellm(config: Config, secrets: Secrets, path: Path, run_by_up: bool) -> int:
    """LiteLLM's side: its Anthropic deployments call the egress, with the egress token, forwarding the handoff.

    Judged as the command that will run it does: `up --litellm-config` sets what the gateway needs (listed), a
    LiteLLM run separately must hold it (``run_by_up`` False).
    """
    import yaml

    from ext_proc.litellm_config import attempts, check_text, shape_problem, up_changes

    token = secrets.egress_token
    if token is None and default_egress_token_path().exists():
        default = replace(config, egress_token_file=default_egress_token_path())
        token = reread_secret(default, "egress_token_file", secrets).egress_token
    pattern, known = config.secret_pattern(), secrets.litellm_keys

    def recognises(key: bytes) -> bool:
        return pattern.search(key) is not None or any(k in key for k in known)

    try:
        with path.open() as fh:  # a stream, so that a syntax error names the file, its line and column
            doc = yaml.safe_load(fh) or {}
        text = path.read_text()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"ext-proc: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    problem = "not a YAML mapping" if not isinstance(doc, dict) else shape_problem(doc)
    if problem:
        print(f"ext-proc: {path}: {problem}", file=sys.stderr)
        return 2
    findings = check_text(text, token, config.anthropic_prefix, os.environ, recognises, config.seal_max_opens,
                          run_by_up=run_by_up, key_headers=config.all_litellm_headers,
                          requires_key=config.litellm_requires_key)  # fmt: skip
    if run_by_up:
        for change in up_changes(doc, os.environ, config.seal_max_opens, str(Layout().egress)):
            print(f"{path}: `up --litellm-config` sets {change}")
        print(f"{path}: (a LiteLLM you run yourself needs the first two in its config: --run-by litellm checks it)")
    else:
        print(f"{path}: {attempts(doc)}; seal_max_opens is {config.seal_max_opens}")
    for finding in findings:
        print(f"{path}: {finding}")
    errors = sum(f.error for f in findings)
    print(f"litellm config {'has ' + str(errors) + ' error(s)' if errors else 'OK'}: {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
