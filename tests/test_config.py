"""Config: defaults, file < environment < flags, and clear messages for every bad value."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest

from ext_proc import cli
from ext_proc.config import Config, ConfigError
from ext_proc.credentials import ApiKey, OAuthToken
from ext_proc.envoy import DEPLOYED_SOCKET, Endpoint, HostPort, Layout, OtherUpstream, render
from ext_proc.seal import KEY_BYTES, key_id
from ext_proc.secrets import (
    Secrets,
    default_egress_token_path,
    egress_token_file,
    load_secrets,
    new_egress_token,
    new_seal_key,
)
from tests.support.command import Ran, run_cli
from tests.support.processes import BIN, bare_env

KEY1 = base64.b64encode(bytes(32)).decode()
KEY2 = new_seal_key()


def test_defaults_are_the_documented_ones() -> None:
    config = Config.load(env={})
    assert config.listen == ""  # the default Unix socket, see test_server_listen_default
    assert config.handoff_header == "x-credential-handoff"
    assert (config.seal_ttl_seconds, config.seal_max_opens) == (60, 3)
    assert config.all_litellm_headers == {"x-litellm-api-key", "api-key", "x-goog-api-key", "ocp-apim-subscription-key"}
    assert "x-stainless-*" in config.egress_allowlist
    assert load_secrets(config).keyring is None and load_secrets(config).server_credential is None


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('listen = "127.0.0.1:1"\nseal_ttl_seconds = 60\nlitellm_headers = ["x-a", "X-B"]\n')
    env = {"EXT_PROC_LISTEN": "127.0.0.1:2", "EXT_PROC_EGRESS_ALLOWLIST": "content-type, x-stainless-*"}
    config = Config.load(file, env, {"listen": "unix:/tmp/s", "seal_key_file": None})
    assert config.listen == "unix:/tmp/s"
    assert config.seal_ttl_seconds == 60
    assert config.litellm_headers == ("x-a", "x-b")
    assert config.egress_allowlist == ("content-type", "x-stainless-*")


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('handoff_header = "X-Handoff"\n')
    assert Config.load(env={"EXT_PROC_CONFIG": str(file)}).handoff_header == "x-handoff"


def test_seal_key_file_rotation_order(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# newest first\n{KEY2}\n\n{KEY1}\n")
    ring = load_secrets(Config.load(env={}, overrides={"seal_key_file": keys})).keyring
    assert ring is not None and len(ring.key_ids) == 2


def test_server_credential_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "server"
    path.write_text("sk-ant-oat01-SERVER\n")
    config = Config.load(env={}, overrides={"server_credential_file": path})
    assert load_secrets(config).server_credential == OAuthToken(b"sk-ant-oat01-SERVER")
    env = {"EXT_PROC_SERVER_CREDENTIAL": "sk-ant-api03-SERVER"}
    assert load_secrets(Config.load(env=env)).server_credential == ApiKey(b"sk-ant-api03-SERVER")


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    config = Config.load(env={"EXT_PROC_SERVER_CREDENTIAL": "sk-ant-api03-SECRET", "EXT_PROC_SEAL_KEYS": KEY2})
    assert "SECRET" not in repr(config) and KEY2 not in repr(config)
    with pytest.raises(ConfigError) as info:
        load_secrets(Config.load(env={"EXT_PROC_SERVER_CREDENTIAL": "sk-master-SECRET"}))
    assert "SECRET" not in str(info.value) and "not an Anthropic credential" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('handoff_header = "credential-handoff"', "handoff_header 'credential-handoff': must be a lower-case header "
         "name starting with 'x-' (LiteLLM forwards x-* headers to the upstream, nothing else)"),
        ("seal_ttl_seconds = 0", "seal_ttl_seconds must be a positive number of seconds"),
        ('seal_ttl_seconds = "soon"', "seal_ttl_seconds: expected a whole number, got 'soon'"),
        ("seal_max_opens = 2.5", "seal_max_opens: expected a whole number, got 2.5"),
        ("seal_max_opens = 2.0", "seal_max_opens: expected a whole number, got 2.0"),
        ("seal_ttl_seconds = true", "seal_ttl_seconds: expected a whole number, got True"),
        ("audit_sample_rate = true", "audit_sample_rate: expected a number, got True"),
        ('seal_keys = ["bm90IGEga2V5"]', "seal key #1: must decode to 32 bytes, got 9"),
        ('seal_keys = ["%%%"]', "seal key #1: not base64"),
        ("bogus = 1", "config file {file}: unknown setting(s) bogus"),
        ('oauth_prefix = "oat"', "oauth_prefix must start with anthropic_prefix, and neither may be empty"),
        ('anthropic_prefix = ""', "oauth_prefix must start with anthropic_prefix, and neither may be empty"),
        ('egress_allowlist = ["x-credential-handoff"]', "egress_allowlist must not contain the handoff header"),
        ('litellm_headers = ["bad header"]', "header name 'bad header': must be lower case and contain only token "
         "characters"),
        ('egress_allowlist = ["bad header*"]', "header name 'bad header': must be lower case and contain only token "
         "characters"),
        ('log_level = "LOUD"', "log_level must be one of DEBUG, INFO, WARNING, ERROR"),
        ('log_format = "yaml"', "log_format must be 'text' or 'json'"),
        ('event_loop = "trio"', "event_loop must be 'uvloop' or 'asyncio'"),
        ("listen = [", "config file {file}: not valid TOML: Invalid value (at end of document)"),
        ('seal_key_file = "/nonexistent/keys"', "seal_key_file /nonexistent/keys: No such file or directory "
         "(`ext-proc keygen` prints a key; without any seal key one is generated for this process)"),
        ("seal_max_opens = 0", "seal_max_opens must be at least 1 (one open per upstream call LiteLLM makes)"),
        ("drain_seconds = -1", "reload_interval_seconds must be positive, grace_seconds and drain_seconds not "
         "negative"),
        ("grace_seconds = -1", "reload_interval_seconds must be positive, grace_seconds and drain_seconds not "
         "negative"),
        ("reload_interval_seconds = 0", "reload_interval_seconds must be positive, grace_seconds and drain_seconds "
         "not negative"),
        ("audit_sample_rate = 1.5", "audit_sample_rate must be between 0 and 1 (rejections are always logged)"),
        ("audit_sample_rate = -0.1", "audit_sample_rate must be between 0 and 1 (rejections are always logged)"),
        ('listen = "ext-proc.sock"', "--listen: expected HOST:PORT, got 'ext-proc.sock'"),
        ('listen = "unix-abstract:ext-proc"', "listen 'unix-abstract:ext-proc': an abstract Unix socket has no "
         "file mode, so any local process could read credentials from the server's answers; use unix:PATH (mode "
         "0600), or HOST:PORT knowingly"),
        ('metrics_listen = "9090"', "metrics_listen '9090': expected HOST:PORT, or 'off'"),
        ('metrics_listen = ":9090"', "metrics_listen ':9090': expected HOST:PORT, or 'off'"),
        ('metrics_listen = "host:port"', "metrics_listen 'host:port': expected HOST:PORT, or 'off'"),
        ('metrics_listen = "h:65536"', "metrics_listen 'h:65536': expected HOST:PORT, or 'off'"),
        ('egress_token = "short"', "egress token: must be at least 32 characters of [A-Za-z0-9._~+/=-] (`ext-proc "
         "keygen --egress-token` prints one)"),
        ('egress_token = "' + "x" * 31 + '"', "egress token: must be at least 32 characters of [A-Za-z0-9._~+/=-] "
         "(`ext-proc keygen --egress-token` prints one)"),
        ('egress_token = "egress-' + "\u0436" * 40 + '"', "egress token: must be at least 32 characters of "
         "[A-Za-z0-9._~+/=-] (`ext-proc keygen --egress-token` prints one)"),
        ('egress_token = "sk-' + "a" * 40 + '"', "egress token: must not look like an Anthropic or LiteLLM key"),
        ('egress_token = "x' + "a" * 40 + '"\negress_token_file = "/t"', "set egress_token or egress_token_file, not "
         "both"),
        ('server_credential = "sk-ant-api03-X"\nserver_credential_file = "/s"', "set server_credential or "
         "server_credential_file, not both"),
        ('seal_keys = ["a"]\nseal_key_file = "/k"', "set seal_keys or seal_key_file, not both"),
        ('server_credential = "sk-ant-api03-\u043a\u043b\u044e\u0447"',
         "server credential: not an Anthropic credential (expected a value starting with 'sk-ant-')"),
        ('secret_patterns = ["(unclosed"]', "secret_patterns '(unclosed': not a regular expression (missing ), "
         "unterminated subpattern at position 0)"),
        ('litellm_keys = ["sk-7chr"]', "litellm_keys: a key of 7 characters is too short to search headers for (at "
         "least 8)"),
        ('litellm_requires_key = "maybe"', "litellm_requires_key: expected true or false, got 'maybe'"),
        ('seal_key_file = 3', "seal_key_file: expected a file path"),
        ("log_level = 3", "log_level: expected a string"),
        ('audit_sample_rate = "half"', "audit_sample_rate: expected a number, got 'half'"),
        ("litellm_headers = [1]", "litellm_headers: expected a list of strings"),
    ],
)  # fmt: skip
def test_bad_config_is_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    """The whole message: the setting, what is wrong, and the way out; never the value of a secret."""
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_secrets(Config.load(file, {}))
    assert str(info.value) == message.format(file=file)


@pytest.mark.parametrize(
    "text",
    ["seal_ttl_seconds = 1", "seal_max_opens = 1", 'log_level = "debug"', 'log_level = "warning"',
     'log_level = "Error"', 'log_format = "json"', "audit_sample_rate = 0.0", "audit_sample_rate = 1.0",
     'metrics_listen = ""', 'metrics_listen = "off"', 'metrics_listen = "[::1]:9090"',
     'egress_token = "' + "x" * 32 + '"', 'litellm_keys = ["sk-8char"]', 'egress_allowlist = ["x-mine-*"]',
     "grace_seconds = 0", "drain_seconds = 0", "audit_sample_rate = 1", 'seal_max_opens = "2"',
     'audit_sample_rate = "0.5"', 'event_loop = "asyncio"', 'event_loop = "uvloop"'],
)  # fmt: skip
def test_each_bound_and_choice_is_accepted_at_its_edge(tmp_path: Path, text: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    assert load_secrets(Config.load(file, {}))


def test_values_that_are_case_sensitive_keep_their_case_header_names_do_not() -> None:
    config = Config.load(env={"EXT_PROC_LITELLM_KEYS": "sk-Mixed-Case-1", "EXT_PROC_SECRET_PATTERNS": "Corp-[A-Z]{4}",
                              "EXT_PROC_SEAL_KEYS": KEY2, "EXT_PROC_UPSTREAM": "Other=https://Api.Example:443",
                              "EXT_PROC_LITELLM_HEADERS": "X-My-Key"})  # fmt: skip
    assert (config.litellm_keys, config.secret_patterns, config.seal_keys, config.upstream, config.litellm_headers) == (
        ("sk-Mixed-Case-1",),
        ("Corp-[A-Z]{4}",),
        (KEY2,),
        ("Other=https://Api.Example:443",),
        ("x-my-key",),
    )


@pytest.mark.parametrize(
    ("text", "unknown"),
    [("seal_tll_seconds = 1\nzzz = 2", "seal_tll_seconds, zzz (did you mean seal_ttl_seconds?)"),
     ("zzz = 2\nyyy = 1", "yyy, zzz")],
)  # fmt: skip
def test_unknown_file_keys_are_all_named_with_the_closest_setting_to_the_first(
    tmp_path: Path, text: str, unknown: str
) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as refused:
        Config.load(file, {})
    assert str(refused.value) == f"config file {file}: unknown setting(s) {unknown}"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml: No such file"):
        Config.load(tmp_path / "missing.toml", {})


def test_secret_patterns_from_the_environment_are_one_per_line() -> None:
    config = Config.load(env={"EXT_PROC_SECRET_PATTERNS": "corp-[0-9]{4,}\nkey_[a-z]{2,3}"})
    assert config.secret_patterns == ("corp-[0-9]{4,}", "key_[a-z]{2,3}")
    assert config.secret_pattern().search(b"x corp-12345") and not config.secret_pattern().search(b"sk-abcdef")


SECRET_SETTINGS = [
    ("server_credential_file", "sk-ant-api03-MODESECRET"),
    ("egress_token_file", "egress-test-token-0123456789abcdefghij"),
    ("seal_key_file", KEY1),
    ("litellm_key_file", "mk-litellm-master-0123456789"),
]


def _load(setting: str, path: Path) -> object:
    """The secret of one file setting, read by the loader the commands use."""
    held = {"server_credential_file": "server_credential", "egress_token_file": "egress_token",
            "seal_key_file": "keyring", "litellm_key_file": "litellm_keys"}  # fmt: skip
    return getattr(load_secrets(Config.load(env={}, overrides={setting: path}, validate=False)), held[setting])


@pytest.mark.parametrize(("setting", "value"), SECRET_SETTINGS)
@pytest.mark.parametrize(
    ("mode", "owner", "allowed"),
    [(0o600, "self", True), (0o400, "self", True), (0o644, "self", False), (0o604, "self", False),
     (0o640, "root", True), (0o440, "root", True), (0o644, "root", False), (0o640, "other", False),
     (0o641, "root", False), (0o601, "other", False), (0o601, "self", False)],
)  # fmt: skip
def test_a_secret_file_others_can_read_is_refused_as_postgresql_refuses_its_key_file(
    tmp_path: Path, setting: str, value: str, mode: int, owner: str, allowed: bool
) -> None:
    """Owned by the user: 0600 or less. Owned by root: 0640 or less (a Kubernetes Secret with defaultMode 0440)."""
    if owner != "self" and os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = tmp_path / "secret"
    path.write_text(value + "\n")
    path.chmod(mode)
    if owner == "other":
        os.chown(path, 65534, 65534)
    elif owner == "root":
        os.chown(path, 0, 0)
    if owner == "root" and os.geteuid() != 0:
        pytest.skip("the file must be root's")
    if allowed:
        assert _load(setting, path)
        return
    with pytest.raises(ConfigError) as refused:
        _load(setting, path)
    assert str(refused.value) == (
        f"{setting} {path}: other users can read it (mode {mode:o}); it holds a secret: chmod 600 {path} (or 640 "
        "owned by root; a Kubernetes Secret volume: defaultMode: 0440 with the pod's fsGroup)"
    )
    assert value not in str(refused.value)


def test_up_and_check_refuse_a_world_readable_secret_file(tmp_path: Path) -> None:
    key = tmp_path / "server-key"
    key.write_text("sk-ant-api03-MODESECRET\n")
    key.chmod(0o644)
    for command in (["check"], ["up", "--ingress-listen", "127.0.0.1:1"]):
        result = subprocess.run(
            [str(BIN / "ext-proc"), *command, "--server-credential-file", str(key)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode != 0, command
        assert f"server_credential_file {key}: other users can read it (mode 644)" in result.stderr, result.stderr
        assert "MODESECRET" not in result.stdout + result.stderr


# One settings model: every setting named by one rule in the file, the environment and the flags of its commands.
SAMPLES = {"str": "sample", "int": "7", "float": "0.5", "bool": "false", "tuple[str, ...]": "a-1,b-2",
           "Path | None": "/run/sample", "str | None": "sample"}  # fmt: skip
SETTINGS = dataclasses.fields(Config)


def _typed(f: dataclasses.Field[Any], text: str) -> Any:
    parse: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "bool": lambda v: v == "true",
        "tuple[str, ...]": lambda v: tuple(v.split(",")),
        "Path | None": Path,
    }
    return parse.get(str(f.type), str)(text)  # fmt: skip


@pytest.mark.parametrize("setting", SETTINGS, ids=[f.name for f in SETTINGS])
def test_every_setting_is_a_file_key_a_variable_and_a_flag_of_the_commands_that_use_it(
    setting: dataclasses.Field[Any], tmp_path: Path
) -> None:
    text = SAMPLES[str(setting.type)]
    expected = _typed(setting, text)
    toml = tmp_path / "c.toml"
    # TOML: numbers and booleans bare, strings quoted, lists as arrays.
    literal = repr(list(expected)) if isinstance(expected, tuple) else text if str(setting.type) in (
        "int", "float", "bool") else repr(text)  # fmt: skip
    toml.write_text(f"{setting.name} = {literal}\n")
    assert getattr(Config.load(toml, {}, validate=False), setting.name) == expected
    # Lists are comma-separated in the environment; regular expressions, which hold commas, one per line.
    env_text = text.replace(",", "\n") if setting.name == "secret_patterns" else text
    env = {f"EXT_PROC_{setting.name.upper()}": env_text}
    assert getattr(Config.load(None, env, validate=False), setting.name) == expected
    parser = cli._parser()
    flag = "--" + setting.name.replace("_", "-")
    for command in ("serve", "up", "check", "envoy-config"):
        uses = command in setting.metadata["commands"]
        if not uses:
            with pytest.raises(SystemExit):
                parser.parse_args([command, flag, text])
            continue
        words = [flag if text != "false" else "--no-" + flag[2:]] + ([] if str(setting.type) == "bool" else [text])
        if str(setting.type) == "tuple[str, ...]":
            words = [w for part in expected for w in (flag, part)]
        args = parser.parse_args([command, *words])
        given = {f.name: getattr(args, f.name) for f in SETTINGS if hasattr(args, f.name)}
        assert getattr(Config.load(None, {}, given, validate=False), setting.name) == expected, command
    assert setting.metadata["help"] and "|" not in setting.metadata["help"], "a cell of the docs' table"


def test_secrets_given_by_value_are_no_flag() -> None:
    secrets = {f.name for f in SETTINGS if not f.repr}
    assert secrets == {"seal_keys", "server_credential", "egress_token", "litellm_keys"}
    assert all(not f.metadata["commands"] for f in SETTINGS if f.name in secrets)


def test_the_docs_table_of_settings_is_the_model_s() -> None:
    from scripts.settings_table import DOC, rewritten

    assert rewritten(DOC.read_text()) == DOC.read_text(), "stale: run .venv/bin/python scripts/settings_table.py"


@pytest.mark.parametrize(
    ("variable", "hint"),
    [("EXT_PROC_SEAL_KEY_FIEL", "; did you mean EXT_PROC_SEAL_KEY_FILE?"),
     ("EXT_PROC_UPSTREEM", "; did you mean EXT_PROC_UPSTREAM?"),
     ("EXT_PROC_EGRES_TOKEN_FILE", "; did you mean EXT_PROC_EGRESS_TOKEN_FILE?"),
     ("EXT_PROC_WHATEVER", " (docs/configuration.md lists every setting)")],
)  # fmt: skip
def test_a_misspelt_variable_stops_the_command_naming_the_closest_setting(variable: str, hint: str) -> None:
    for command in (["check"], ["envoy-config"], ["serve"], ["up"]):
        result = run_cli(command, {variable: "/run/x"})
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr == f"ext-proc: configuration error: {variable} is not a setting{hint}\n"


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["check"], {"EXT_PROC_SEAL_KEY_FIEL": "/run/x"}),
     (["envoy-config", "--ingress-listen", "127.0.0.1:18099"], {"EXT_PROC_UPSTREAMS": "openai=http://127.0.0.1:9"}),
     (["serve", "--server-credential", "sk-ant-api03-" + "Q" * 40], {}),
     (["up", "--seal-ttl-seconds", "0"], {})],
)  # fmt: skip
def test_the_installed_command_answers_as_cli_main_does_in_the_tests(argv: list[str], env: dict[str, str]) -> None:
    """The tests run cli.main in this process (tests/support/command.py); the console script is that function."""
    installed = subprocess.run([str(BIN / "ext-proc"), *argv], capture_output=True, text=True, timeout=60,
                               env=bare_env(**env))  # fmt: skip
    assert run_cli(argv, env) == Ran(installed.returncode, installed.stdout, installed.stderr)


def test_main_without_arguments_reads_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console script calls main() with nothing: the arguments come from sys.argv, past the program name."""
    monkeypatch.setattr(sys, "argv", ["ext-proc", "up", "--seal-ttl-seconds", "0"])
    with patch.dict(os.environ, {}, clear=True), redirect_stderr(io.StringIO()) as err:
        assert cli.main() == 2
    assert err.getvalue() == "ext-proc: configuration error: seal_ttl_seconds must be a positive number of seconds\n"


def test_a_misspelt_file_key_names_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('ingres_listen = "0.0.0.0:1"\n')
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) ingres_listen \(did you mean ingress_listen\?\)"):
        Config.load(tmp_path / "c.toml", {})


def _service_links(service: str, ports: list[dict[str, Any]]) -> list[str]:
    """The variables the kubelet sets for a Service (Kubernetes' docs, 'Environment variables' of Services)."""
    name = service.upper().replace("-", "_")
    found = [f"{name}_SERVICE_HOST", f"{name}_SERVICE_PORT", f"{name}_PORT"]
    for port in ports:
        proto = port.get("protocol", "TCP")
        base = f"{name}_PORT_{port['port']}_{proto}"
        found += [base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"]
        if "name" in port:
            found.append(f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return found


def test_kubernetes_service_link_variables_are_no_setting() -> None:
    """Every Service the chart and the overlays make, and a Service named ext-proc: their variables start with
    EXT_PROC_ in every pod of the namespace, and must not stop the server."""
    from tests.support.helm_render import render_chart
    from tests.support.pods import render_overlay

    docs = [*render_chart(), *render_overlay("gateway"), *render_overlay("sidecar")]
    services = {d["metadata"]["name"]: d["spec"]["ports"] for d in docs if d["kind"] == "Service"}
    services["ext-proc"] = [{"name": "metrics", "port": 9464}]
    env = {v: "10.0.0.1" for name, ports in services.items() if name.startswith("ext-proc")
           for v in _service_links(name, ports)}  # fmt: skip
    assert "EXT_PROC_CREDENTIALS_EGRESS_SERVICE_PORT_EGRESS" in env and "EXT_PROC_PORT_9464_TCP_ADDR" in env
    assert Config.load(None, env).listen == ""


def test_layout_settings_come_from_the_file_and_the_environment_too(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('ingress_listen = "127.0.0.1:18099"\nupstream = ["openai=http://127.0.0.1:9"]\n')
    env = {"EXT_PROC_CONFIG": str(tmp_path / "c.toml"), "EXT_PROC_EGRESS_LISTEN": "127.0.0.1:18100"}
    result = run_cli(["envoy-config"], env)
    assert (result.returncode, result.stderr) == (0, "")
    expected = Layout(ingress=HostPort("127.0.0.1", 18099), egress=HostPort("127.0.0.1", 18100),
                      upstreams=(OtherUpstream("openai", Endpoint("http", "127.0.0.1", 9)),))  # fmt: skip
    assert result.stdout == render(expected)


def test_the_earlier_upstreams_variable_is_the_upstream_setting() -> None:
    result = run_cli(["envoy-config"], {"EXT_PROC_UPSTREAMS": "openai=http://127.0.0.1:9"})
    assert result.returncode == 0
    assert result.stdout == render(Layout(upstreams=(OtherUpstream("openai", Endpoint("http", "127.0.0.1", 9)),)))
    assert result.stderr == (
        "ext-proc: EXT_PROC_UPSTREAMS is now EXT_PROC_UPSTREAM; the old spelling will stop working in a later release\n"
    )


def test_a_secret_after_a_mistyped_flag_is_not_taken_as_a_file_nor_repeated() -> None:
    """`--server-credential KEY` is no flag (secrets have none) and no abbreviation of --server-credential-file:
    refused, without the key in the message (argparse would repeat the unrecognised words)."""
    secret = "sk-ant-api03-" + "Q" * 40
    result = run_cli(["serve", "--server-credential", secret], {})
    assert result.returncode == 2
    assert "unrecognized arguments: --server-credential" in result.stderr
    assert secret not in result.stderr + result.stdout and "Q" * 40 not in result.stderr


def test_every_variable_the_docs_and_manifests_name_is_a_setting() -> None:
    """Or CONFIG, an earlier spelling still mapped, a Service's variable, or the docs' example of a typo."""
    from ext_proc.config import _SERVICE_LINK

    root = Path(__file__).resolve().parent.parent
    deploy = [p for p in (root / "deploy").rglob("*") if p.is_file()]
    files = [root / "README.md", *(root / "docs").glob("*.md"), *deploy]
    named = {m for f in files for m in re.findall(r"EXT_PROC_[A-Z0-9_]*[A-Z0-9]", f.read_text())}
    allowed = {"EXT_PROC_CONFIG", "EXT_PROC_SEAL_KEY_FIEL", *(f"EXT_PROC_{old}" for _, old, _ in cli.RENAMED_ENV)}
    settings = {f"EXT_PROC_{f.name.upper()}" for f in SETTINGS}
    assert {n for n in named - settings - allowed if not _SERVICE_LINK.fullmatch(n)} == set()
    assert len(named & settings) >= 30


def test_an_egress_token_file_up_cannot_make_is_a_configuration_error(tmp_path: Path) -> None:
    """`up` makes the egress token file wherever the setting came from; where it cannot, it says so and exits 2."""
    (tmp_path / "a-file").write_text("")
    env = {"EXT_PROC_EGRESS_TOKEN_FILE": str(tmp_path / "a-file" / "egress-token"), "HOME": str(tmp_path)}
    result = run_cli(["up"], env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"ext-proc: configuration error: [Errno 17] File exists: '{tmp_path / 'a-file'}'\n"


def test_up_refused_for_a_secret_file_keeps_the_egress_token_it_made_for_the_next_start(tmp_path: Path) -> None:
    """The settings are accepted, the token file is made, then the seal key file cannot be read: a refusal naming
    that file, and the token stays where the next `up` reads it."""
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = run_cli(["up", "--seal-key-file", str(tmp_path / "missing")], env)
    assert result == Ran(
        2,
        "",
        f"ext-proc: configuration error: seal_key_file {tmp_path / 'missing'}: No such file or directory (`ext-proc "
        "keygen` prints a key; without any seal key one is generated for this process)\n",
    )
    token = tmp_path / "config" / "ext-proc" / "egress-token"
    assert load_secrets(Config(egress_token_file=token)).egress_token is not None


# Run in a fresh interpreter: an audit hook lists every open() of the four secret files while a command starts.
_COUNT_OPENS = """
import asyncio, collections, sys
from ext_proc import cli, server
watched = set(sys.argv[2:6])
opened = collections.Counter()


def count(event, args):
    if event == "open" and str(args[0]) in watched:
        opened.update([str(args[0])])


sys.addaudithook(count)

async def serve_once(self, on_ready):
    on_ready(await self.start())
    await self.stop(drain_seconds=0)

server.Server.run_until_signalled = serve_once
code = cli.main(sys.argv[1].split() + ["--seal-key-file", sys.argv[2], "--server-credential-file", sys.argv[3],
                                       "--egress-token-file", sys.argv[4], "--litellm-key-file", sys.argv[5]])
print(code, sorted(opened.values()), len(opened))
"""


@pytest.mark.parametrize("command", ["check", "serve --metrics-listen off --listen unix:{dir}/s.sock"])
def test_each_secret_file_is_read_once_when_a_command_starts(tmp_path: Path, command: str) -> None:
    """One loader reads the secrets once and hands the value on: the settings' validation and the server's rule
    context read no file of their own (a reload rereads only the file that changed)."""
    files = {"seal-keys": KEY1, "server-key": "sk-ant-api03-READONCE", "egress-token": "egress-" + "t" * 40,
             "litellm-keys": "mk-litellm-master-0123456789"}  # fmt: skip
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    result = subprocess.run(
        [str(BIN / "python"), "-c", _COUNT_OPENS, command.format(dir=tmp_path), *(str(tmp_path / n) for n in files)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "0 [1, 1, 1, 1] 4", result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "make", "reason"),
    [
        ("seal_key_file", None, "No such file or directory (`ext-proc keygen` prints a key; without any seal key one "
         "is generated for this process)"),
        ("egress_token_file", None, "No such file or directory (`ext-proc keygen --egress-token` prints one; "
         "`ext-proc up` makes it on first start)"),
        ("litellm_key_file", None, "No such file or directory"),
        ("seal_key_file", "dir", "Is a directory"),
        ("seal_key_file", "# only a comment\n", "holds no key"),
        ("server_credential_file", "sk-ant-api03-ONE\nsk-ant-api03-TWO\n", "must hold one line"),
        ("egress_token_file", "\n", "must hold one line"),
    ],
)  # fmt: skip
def test_a_secret_file_that_cannot_be_read_says_why_and_what_makes_one(
    tmp_path: Path, setting: str, make: str | None, reason: str
) -> None:
    """Only a missing file gets the hint of the command that makes one; any other error is the system's own."""
    path = tmp_path / "secret"
    if make == "dir":
        path.mkdir(mode=0o700)
    elif make is not None:
        path.write_text(make)
    with pytest.raises(ConfigError) as refused:
        load_secrets(Config.load(env={}, overrides={setting: path}, validate=False))
    assert str(refused.value) == f"{setting} {path}: {reason}"


def test_a_key_file_holds_comments_indented_keys_without_padding_and_latin_1(tmp_path: Path) -> None:
    """A hand-edited file: indented comments and keys, base64url without its "=" (as urlsafe tools print it), and a
    LiteLLM key with a byte that is not UTF-8 (read as Latin-1, as Envoy hands header bytes over)."""
    keys, litellm = tmp_path / "keys", tmp_path / "litellm"
    unpadded = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
    keys.write_text(f"  # newest first\n  {unpadded}  \n\t# the previous one\n{KEY1}\n")
    litellm.write_bytes(b"  # the master key\nsk-litellm-caf\xe9-0123\n")
    secrets = load_secrets(Config.load(env={}, overrides={"seal_key_file": keys, "litellm_key_file": litellm}))
    assert secrets.keyring is not None
    assert secrets.keyring.key_ids == (key_id(bytes(range(32))).hex(), key_id(bytes(32)).hex())
    assert secrets.litellm_keys == (b"sk-litellm-caf\xe9-0123",)


def test_new_keys_and_tokens_are_random_and_what_the_loader_takes() -> None:
    """`ext-proc keygen` prints a seal key, `keygen --egress-token` an egress token, one line each."""
    printed = [run_cli(["keygen", *flag], {}) for flag in ([], [], ["--egress-token"], ["--egress-token"])]
    assert all(ran.returncode == 0 and ran.stderr == "" and ran.stdout.count("\n") == 1 for ran in printed)
    keys = {new_seal_key(), *(ran.stdout.strip() for ran in printed[:2])}
    tokens = {new_egress_token(), *(ran.stdout.strip() for ran in printed[2:])}
    assert len(keys) == len(tokens) == 3
    for key, token in zip(keys, tokens, strict=True):
        assert len(base64.urlsafe_b64decode(key)) == KEY_BYTES
        assert token.startswith("egress-") and len(token) == len("egress-") + 43
        secrets = load_secrets(Config.load(env={"EXT_PROC_SEAL_KEYS": key, "EXT_PROC_EGRESS_TOKEN": token}))
        assert secrets.egress_token == token.encode()
        assert secrets.keyring is not None and secrets.keyring.key_ids == (key_id(base64.urlsafe_b64decode(key)).hex(),)


def test_up_s_egress_token_file_is_made_private_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under $XDG_CONFIG_HOME, else ~/.config; 0600 in a 0700 directory whatever the umask; the same token on every
    later start; made again, in the directory already there, when deleted."""
    caplog.set_level("INFO", logger="ext_proc.up")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_egress_token_path() == tmp_path / "home" / ".config" / "ext-proc" / "egress-token"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    umask = os.umask(0o022)
    try:
        path = egress_token_file()
    finally:
        os.umask(umask)
    assert path == default_egress_token_path() == tmp_path / "xdg" / "ext-proc" / "egress-token"
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    made = [(r.name, r.getMessage()) for r in caplog.records]
    assert made == [("ext_proc.up", f"generated the egress token in {path}")]
    token = path.read_text()
    assert token.endswith("\n") and token.count("\n") == 1
    loaded = load_secrets(Config.load(env={}, overrides={"egress_token_file": path}))
    assert loaded.egress_token == token.strip().encode()
    assert egress_token_file() == path and path.read_text() == token
    path.unlink()
    assert egress_token_file() == path and path.read_text() not in ("", token)
    given = tmp_path / "given" / "token"
    assert egress_token_file(given) == given and given.read_text() != token


def test_secrets_show_what_is_set_never_a_value() -> None:
    secrets = load_secrets(Config.load(env={"EXT_PROC_SEAL_KEYS": f"{KEY2},{KEY1}",
                                            "EXT_PROC_SERVER_CREDENTIAL": "sk-ant-api03-REPRSECRET",
                                            "EXT_PROC_EGRESS_TOKEN": "egress-" + "r" * 40,
                                            "EXT_PROC_LITELLM_KEYS": "sk-litellm-one-1,sk-litellm-two-2"}))  # fmt: skip
    assert secrets.keyring is not None and secrets.server_credential is not None
    assert repr(secrets) == (
        f"Secrets(keyring={secrets.keyring.key_ids}, server_credential={secrets.server_credential.fingerprint()}, "
        "egress_token=set, litellm_keys=2)"
    )
    assert repr(Secrets()) == "Secrets(keyring=None, server_credential=None, egress_token=None, litellm_keys=0)"


def test_every_layout_setting_lands_where_envoy_reads_it() -> None:
    from ext_proc.envoy import DEPLOYED_SOCKET, Endpoint, HostPort, Layout, OtherUpstream

    assert Config().layout() == Layout(server_address=DEPLOYED_SOCKET)
    config = Config(ingress_listen="10.0.0.1:9080", egress_listen="127.0.0.1:19000", probe_listen="0.0.0.0:8081",
                    admin_listen="127.0.0.1:9901", litellm="http://litellm:4000", anthropic="https://a.example:8443",
                    upstream=("openai=https://api.openai.com:443",), server_address="unix:/run/x/s.sock",
                    tracing_endpoint="http://otel:4317")  # fmt: skip
    assert config.layout() == Layout(
        ingress=HostPort("10.0.0.1", 9080), egress=HostPort("127.0.0.1", 19000), probe=HostPort("0.0.0.0", 8081),
        admin=HostPort("127.0.0.1", 9901), litellm=Endpoint("http", "litellm", 4000),
        anthropic=Endpoint("https", "a.example", 8443),
        upstreams=(OtherUpstream("openai", Endpoint("https", "api.openai.com", 443)),),
        server_address="unix:/run/x/s.sock", tracing=HostPort("otel", 4317),
    )  # fmt: skip
    assert Config(admin_listen="unix:/run/x/admin.sock").layout().admin == "unix:/run/x/admin.sock"


def test_a_server_address_of_host_and_port_is_the_ext_proc_cluster_s_socket_address() -> None:
    """`envoy-config --server-address ext-proc:9000`: a server in another container or pod, reached over TCP."""
    from ext_proc.envoy import bootstrap

    def ext_proc_endpoint(layout: Layout) -> dict[str, Any]:
        (cluster,) = [c for c in bootstrap(layout)["static_resources"]["clusters"] if c["name"] == "ext_proc"]
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        return dict(endpoint["endpoint"]["address"])

    tcp = Config(server_address="ext-proc:9000").layout()
    assert ext_proc_endpoint(tcp) == {"socket_address": {"address": "ext-proc", "port_value": 9000}}
    assert ext_proc_endpoint(Config().layout()) == {"pipe": {"path": DEPLOYED_SOCKET.removeprefix("unix:")}}
    with pytest.raises(ValueError) as refused:  # a Layout built in code is checked when rendered
        bootstrap(dataclasses.replace(tcp, server_address="ext-proc"))
    assert str(refused.value) == "ext_proc address: expected HOST:PORT, got 'ext-proc'"


def test_every_https_upstream_is_verified_against_the_ca_bundle_for_its_own_name() -> None:
    """LiteLLM, Anthropic and another provider alike: TLS with the system's CAs and the host as SNI and SAN."""
    from ext_proc.envoy import CA_BUNDLE, bootstrap

    layout = Config(litellm="https://litellm.internal:4000", upstream=("openai=https://api.openai.com",)).layout()
    verified = {}
    for cluster in bootstrap(layout)["static_resources"]["clusters"]:
        tls = cluster.get("transport_socket", {}).get("typed_config", {})
        if tls:
            context = tls["common_tls_context"]["validation_context"]
            (san,) = context["match_typed_subject_alt_names"]
            verified[cluster["name"]] = (context["trusted_ca"]["filename"], tls["sni"], san["matcher"]["exact"])
    assert verified == {
        "litellm": (CA_BUNDLE, "litellm.internal", "litellm.internal"),
        "anthropic": (CA_BUNDLE, "api.anthropic.com", "api.anthropic.com"),
        "upstream-openai": (CA_BUNDLE, "api.openai.com", "api.openai.com"),
    }


@pytest.mark.parametrize(
    ("admin", "probe", "stats"),
    [("unix:/run/a.sock", "0.0.0.0:8081", True), ("unix:/run/a.sock", "", False),
     ("127.0.0.1:9901", "0.0.0.0:8081", False), ("", "0.0.0.0:8081", False)],
)  # fmt: skip
def test_the_probe_serves_stats_only_from_an_admin_socket(admin: str, probe: str, stats: bool) -> None:
    """docs/operations.md: the probe port proxies GET /stats/prometheus to Envoy's admin socket, and only then is
    there a cluster to that socket; a TCP admin port is the operator's to scrape."""
    from ext_proc.envoy import STATS_PATH, bootstrap

    document = bootstrap(Config(admin_listen=admin, probe_listen=probe).layout())
    clusters = [c["name"] for c in document["static_resources"]["clusters"]]
    probes = [lst for lst in document["static_resources"]["listeners"] if lst["name"] == "probe"]
    routes = [r for p in probes for r in p["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
              ["virtual_hosts"][0]["routes"]]  # fmt: skip
    assert ("envoy_admin" in clusters) == stats
    assert [r["match"].get("path") for r in routes] == ([STATS_PATH, None] if stats else [None] if probe else [])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ingress_listen": "8080"}, "--ingress-listen: expected HOST:PORT, got '8080'"),
        ({"egress_listen": "localhost"}, "--egress-listen: expected HOST:PORT, got 'localhost'"),
        ({"probe_listen": ":1"}, "--probe-listen: expected HOST:PORT, got ':1'"),
        ({"admin_listen": "admin"}, "--admin-listen: expected HOST:PORT, got 'admin'"),
        ({"upstream": ("a=http://x:1", "a=http://y:2")}, "--upstream: each NAME once, got a, a"),
        ({"litellm": "litellm:4000"}, "--litellm: expected an http:// or https:// URL, got 'litellm:4000'"),
        ({"anthropic": "ftp://x:1"}, "--anthropic: expected an http:// or https:// URL, got 'ftp://x:1'"),
        ({"server_address": "ext-proc"}, "--server-address: expected HOST:PORT, got 'ext-proc'"),
    ],
)  # fmt: skip
def test_a_bad_layout_setting_names_its_flag(settings: dict[str, Any], message: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as refused:
        Config(**settings).layout()
    assert str(refused.value) == message


def test_serve_s_default_socket_is_in_a_directory_of_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ext_proc.config import default_socket

    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket() == "unix:/run/user/1000/ext-proc/ext-proc.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert default_socket() == f"unix:{tmp_path}/ext-proc-{os.getuid()}/ext-proc.sock"


@pytest.mark.parametrize(
    ("spelt", "value"),
    [("true", True), ("1", True), ("yes", True), ("on", True), (" ON ", True),
     ("false", False), ("0", False), ("no", False), ("off", False), ("Off", False)],
)  # fmt: skip
def test_a_boolean_in_the_environment_is_spelt_as_a_shell_user_would(spelt: str, value: bool) -> None:
    assert Config.load(env={"EXT_PROC_LITELLM_REQUIRES_KEY": spelt}).litellm_requires_key is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXT_PROC_SEAL_KEY_FIEL": "/k"},
         "EXT_PROC_SEAL_KEY_FIEL is not a setting; did you mean EXT_PROC_SEAL_KEY_FILE?"),
        ({"HOME": "/root", "EXT_PROC_LOG_LEVEL": "info", "EXT_PROC_UPSTREEM": "a=http://x:1"},
         "EXT_PROC_UPSTREEM is not a setting; did you mean EXT_PROC_UPSTREAM?"),
        ({"EXT_PROC_WHATEVER": "1"}, "EXT_PROC_WHATEVER is not a setting (docs/configuration.md lists every setting)"),
    ],
)  # fmt: skip
def test_a_misspelt_variable_is_refused_naming_the_closest_setting(env: dict[str, str], message: str) -> None:
    """Every variable is looked at, in order, whatever comes before the misspelt one."""
    with pytest.raises(ConfigError) as refused:
        Config.load(env=env)
    assert str(refused.value) == message


def test_no_environment_and_empty_variables_are_the_defaults() -> None:
    assert Config.load() == Config() == Config.load(env={"EXT_PROC_LOG_LEVEL": "", "EXT_PROC_SEAL_TTL_SECONDS": ""})


def test_a_litellm_key_outside_latin_1_is_searched_as_envoy_hands_it_over() -> None:
    config = Config.load(env={"EXT_PROC_LITELLM_KEYS": "sk-litellm-\u043a\u043b\u044e\u0447-1"})
    assert load_secrets(config).litellm_keys == (b"sk-litellm-????-1",)


def test_a_header_name_setting_takes_every_token_character() -> None:
    """RFC 9110's tchar, lower case: what Envoy delivers as a header name, so what a setting may name."""
    name = "x-az09!#$%&'*+.^_`|~-"
    config = Config(litellm_headers=(name,), egress_allowlist=(name, f"{name}*")).validated()
    assert config.litellm_headers == (name,)


def test_service_links_with_digits_and_underscores_in_port_names_are_no_setting() -> None:
    """Kubernetes turns a port named grpc-2 or http-metrics into GRPC_2 and HTTP_METRICS."""
    env = {"EXT_PROC_CREDENTIALS_SERVICE_PORT_GRPC_2": "9000", "EXT_PROC_CREDENTIALS_SERVICE_PORT_HTTP_METRICS": "1"}
    assert Config.load(None, env) == Config()


@pytest.mark.parametrize(
    ("listen", "socket"),
    [("unix:/run/gw/ext-proc.sock", Path("/run/gw/ext-proc.sock")), ("127.0.0.1:0", None), ("[::1]:9000", None),
     # Host names that begin as gRPC's address schemes do are host names: only `unix:` makes a socket file.
     ("unixhost:9000", None), ("unix-abstracted.example:9000", None)],
)  # fmt: skip
def test_serve_listens_on_a_unix_socket_only_when_told_unix_path(listen: str, socket: Path | None) -> None:
    assert Config(listen=listen).validated().listen_socket == socket


def test_serve_refuses_an_abstract_socket_at_start() -> None:
    """docs/operations.md: gRPC would bind `unix-abstract:NAME` in the abstract namespace, open to every process in
    the network namespace; `serve` says so and stops, listening nowhere."""
    message = (
        "ext-proc: configuration error: listen 'unix-abstract:ext-proc': an abstract Unix socket has no file mode, so "
        "any local process could read credentials from the server's answers; use unix:PATH (mode 0600), or HOST:PORT "
        "knowingly\n"
    )
    assert run_cli(["serve", "--listen", "unix-abstract:ext-proc"], {}) == Ran(2, "", message)


def test_serve_listens_by_default_on_the_private_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert Config().validated().listen_socket == tmp_path / "ext-proc" / "ext-proc.sock"


@pytest.mark.parametrize(
    ("listen", "address"),
    [("", None), ("off", None), ("127.0.0.1:9464", HostPort("127.0.0.1", 9464)), ("[::1]:9", HostPort("::1", 9))],
)
def test_the_metrics_address_is_read_from_metrics_listen(listen: str, address: HostPort | None) -> None:
    assert Config(metrics_listen=listen).validated().metrics_address == address


def _docs_settings() -> list[list[str]]:
    """docs/configuration.md's table of settings: file key, environment, flag and commands, default, meaning."""
    rows = []
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for line in text.split("<!-- settings:")[1].split("<!-- end of settings -->")[0].splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append([c.strip("`") if i in (0, 1, 3) else c for i, c in enumerate(cells)])
    return rows


# Each command's flags that are not settings (what it works on), as `--help` shows them: flag and value, meaning.
COMMAND_OWN = {
    "up": {},
    "serve": {},
    "check": {
        "--envoy-config ENVOY_CONFIG": "an Envoy bootstrap to validate with `envoy --mode validate`",
        "--run-by RUN_BY": "who runs --litellm-config: 'up' (`up --litellm-config`, which sets what the gateway needs "
        "and says so) or 'litellm' (a LiteLLM you run, which must hold those settings itself)",
    },
    "envoy-config": {"--all DEPLOY_DIR": "write every Envoy config the repository ships under DEPLOY_DIR instead"},
    "health": {"--address ADDRESS": "the server's address, unix:PATH or HOST:PORT"},
    "keygen": {"--egress-token": "print a new egress token instead"},
}


def _own_flags(command: str) -> set[str]:
    return {flag.split()[0] for flag in COMMAND_OWN[command]}


def _offered(command: str) -> dict[str, str]:
    """`ext-proc COMMAND --help`'s options after -h: flag (with its value's name) and help text."""
    ran = run_cli([command, "--help"], {"COLUMNS": "10000"})  # no wrapping inside a word (x-stainless-*)
    assert (ran.returncode, ran.stderr) == (0, "")
    entries = re.split(r"\n(?=  -)", ran.stdout.split("\noptions:\n")[1])
    parsed = (re.fullmatch(r"\s*(--[a-z-]+(?:, --no-[a-z-]+| [A-Z_]+)?)\s+(.*)", e, re.DOTALL) for e in entries[1:])
    offered = {m[1]: " ".join(m[2].split()) for m in parsed if m}
    assert len(offered) == len(entries) - 1, "each option after -h has a flag, its value's name and a help text"
    return offered


@pytest.mark.parametrize("command", list(COMMAND_OWN))
def test_a_command_s_own_flags_are_offered_with_what_they_take_and_mean(command: str) -> None:
    own = {flag: text for flag, text in _offered(command).items() if flag.split()[0] in _own_flags(command)}
    assert own == COMMAND_OWN[command]


def test_the_docs_name_each_command_s_own_flags() -> None:
    """docs/configuration.md's sentence on the flags that are no setting (`check --envoy-config FILE ...`)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    sentence = " ".join(text.split("is a flag of that command only")[0].split("\n\n")[-1].split())
    named = {m[1]: set(re.findall(r"--[a-z-]+", m[2])) for m in re.finditer(r"`([a-z-]+) (--[^`]*)`", sentence)}
    assert named == {command: _own_flags(command) for command in COMMAND_OWN if COMMAND_OWN[command]}


@pytest.mark.parametrize("command", ["up", "serve", "check", "envoy-config"])
def test_each_command_s_help_offers_the_flags_the_docs_give_it_with_their_meaning(command: str) -> None:
    """docs/configuration.md's "flag, in" column is what `ext-proc COMMAND --help` offers, each flag with the
    table's meaning, its variable and its default."""
    documented = {}
    for _key, env, flag_in, default, meaning in _docs_settings():
        flag, _, commands = flag_in.partition(", ")
        if command in commands.split(", "):
            documented[flag.strip("`")] = f"{meaning} (env {env}{'; default ' + default if default != 'none' else ''})"
    offered = {flag.split()[0].removesuffix(","): text for flag, text in _offered(command).items()}
    assert offered.pop("--config") == "TOML config file; env EXT_PROC_CONFIG"
    assert set(offered) - _own_flags(command) == set(documented) != set()
    assert {flag: offered[flag] for flag in documented} == documented


def test_the_command_s_help_is_the_module_s_and_a_command_is_required() -> None:
    ran = run_cli(["--help"], {"COLUMNS": "10000"})
    assert (ran.returncode, ran.stderr) == (0, "") and cli.__doc__ is not None
    assert cli.__doc__.strip() in ran.stdout, "the module's description, its lines kept"
    assert ran.stdout.startswith("usage: ext-proc [-h] {up,serve,check,envoy-config,health,keygen} ...\n")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    summaries = dict(re.findall(r"^    ([a-z-]+) +(\S.*)$", ran.stdout, re.MULTILINE))
    assert summaries == {
        "up": "run Envoy (both legs) and the ext_proc server together",
        "serve": "run only the ext_proc gRPC server",
        "check": "validate the configuration (and an Envoy config) without serving",
        "envoy-config": "print the Envoy bootstrap for both legs",
        "health": "ask a running server's gRPC health service; exit 0 when SERVING",
        "keygen": "print a new random seal key",
    }
    assert all(f"`ext-proc {command}" in readme for command in summaries), "README's table of commands has each"
    assert run_cli([], {}) == Ran(
        2,
        "",
        "usage: ext-proc [-h] {up,serve,check,envoy-config,health,keygen} ...\n"
        "ext-proc: error: the following arguments are required: command\n",
    )


def _parsed_or_refused(parse: Callable[[], object], expected: object) -> None:
    """``parse()`` gives ``expected``; or, when that is a message, refuses with exactly it."""
    if isinstance(expected, str):
        with pytest.raises(ValueError) as refused:
            parse()
        assert str(refused.value) == expected
    else:
        assert parse() == expected


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:0", HostPort("127.0.0.1", 0)), ("[::1]:65535", HostPort("::1", 65535)),
     ("envoy:9901", HostPort("envoy", 9901)), ("X1:80", HostPort("X1", 80)),
     ("127.0.0.1:65536", "--x: expected HOST:PORT, got '127.0.0.1:65536'"),
     ("h:x", "--x: expected HOST:PORT, got 'h:x'"),
     (":80", "--x: expected HOST:PORT, got ':80'"), ("h", "--x: expected HOST:PORT, got 'h'"),
     ("h:-1", "--x: expected HOST:PORT, got 'h:-1'")],
)  # fmt: skip
def test_a_listen_address_is_host_and_port_and_a_bracketed_ipv6_host_loses_its_brackets(
    text: str, parsed: HostPort | str
) -> None:
    _parsed_or_refused(lambda: HostPort.parse(text, "--x"), parsed)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("http://litellm", Endpoint("http", "litellm", 80)), ("https://api.anthropic.com/", Endpoint("https",
     "api.anthropic.com", 443)), ("http://h:8443", Endpoint("http", "h", 8443)),
     ("http://h/v1", "--x: give the base URL without a path, got 'http://h/v1'"),
     ("ftp://h", "--x: expected an http:// or https:// URL, got 'ftp://h'"),
     ("http://", "--x: expected an http:// or https:// URL, got 'http://'")],
)  # fmt: skip
def test_a_target_is_a_base_url_whose_port_defaults_by_scheme(text: str, parsed: Endpoint | str) -> None:
    _parsed_or_refused(lambda: Endpoint.parse(text, "--x"), parsed)


@pytest.mark.parametrize(
    ("url", "authority", "address", "reached_at"),
    [("http://h:8443", "h:8443", "h:8443", "h:8443"), ("https://h", "h", "h:443", "h:443"),
     ("http://0.0.0.0:80", "0.0.0.0", "0.0.0.0:80", "127.0.0.1:80"),
     ("http://[::]:4000", "[::]:4000", "[::]:4000", "[::1]:4000"), ("https://[fd00::7]", "[fd00::7]", "[fd00::7]:443",
     "[fd00::7]:443")],
)  # fmt: skip
def test_an_address_is_written_as_urls_and_host_headers_need_it_and_a_wildcard_is_reached_at_its_loopback(
    url: str, authority: str, address: str, reached_at: str
) -> None:
    """docs/configuration.md: IPv6 hosts bracketed; a wildcard reached at the loopback of its own family."""
    endpoint = Endpoint.parse(url, "--x")
    assert (endpoint.authority, str(endpoint.address), str(endpoint.address.reached_at)) == (
        authority, address, reached_at
    )  # fmt: skip
    assert HostPort.parse(address, "--x") == endpoint.address, "what is printed parses back"


UPSTREAM_SHAPE = ("--upstream: expected NAME=URL with NAME of lower-case letters, digits and '-' (not 'anthropic'), "
                  "got ")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("openai-2=http://h:9", OtherUpstream("openai-2", Endpoint("http", "h", 9))),
     ("01-ai=http://h:9", OtherUpstream("01-ai", Endpoint("http", "h", 9))),  # a provider's name may start with a digit
     ("OpenAI=http://h", UPSTREAM_SHAPE + "'OpenAI=http://h'"), ("anthropic=http://h", UPSTREAM_SHAPE +
     "'anthropic=http://h'"), ("openai", UPSTREAM_SHAPE + "'openai'"),
     ("bad=name=http://h", "--upstream bad: expected an http:// or https:// URL, got 'name=http://h'")],
)  # fmt: skip
def test_another_provider_is_name_equals_url(text: str, parsed: OtherUpstream | str) -> None:
    _parsed_or_refused(lambda: OtherUpstream.parse(text), parsed)


def test_envoy_config_reads_only_the_layout_so_a_server_setting_cannot_stop_it(tmp_path: Path) -> None:
    """A pod's environment holds the server's settings too; `envoy-config` renders from the layout alone, while a
    command that serves refuses them, and `up` makes no egress token for a start it refuses."""
    env = {"EXT_PROC_SEAL_TTL_SECONDS": "0"}
    assert run_cli(["envoy-config"], env) == Ran(0, render(Layout()), "")
    refusal = "ext-proc: configuration error: seal_ttl_seconds must be a positive number of seconds\n"
    assert run_cli(["check"], env) == Ran(2, "", refusal)
    assert run_cli(["up"], {**env, "XDG_CONFIG_HOME": str(tmp_path)}) == Ran(2, "", refusal)
    assert list(tmp_path.iterdir()) == []
