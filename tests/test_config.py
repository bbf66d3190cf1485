"""Config: defaults, file < environment < flags, and clear messages for every bad value."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ext_proc.config import Config, ConfigError, new_seal_key
from ext_proc.credentials import ApiKey, OAuthToken
from tests.support.processes import BIN

KEY1 = base64.b64encode(bytes(32)).decode()
KEY2 = new_seal_key()


def test_defaults_are_the_documented_ones() -> None:
    config = Config.load(env={})
    assert config.listen == ""  # the default Unix socket, see test_server_listen_default
    assert config.handoff_header == "x-credential-handoff"
    assert (config.seal_ttl_seconds, config.seal_max_opens) == (60, 3)
    assert config.all_litellm_headers == {"x-litellm-api-key", "api-key", "x-goog-api-key", "ocp-apim-subscription-key"}
    assert "x-stainless-*" in config.egress_allowlist
    assert config.keyring() is None and config.load_server_credential() is None


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
    ring = Config.load(env={}, overrides={"seal_key_file": keys}).keyring()
    assert ring is not None and len(ring.key_ids) == 2


def test_server_credential_from_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "server"
    path.write_text("sk-ant-oat01-SERVER\n")
    assert Config.load(env={}, overrides={"server_credential_file": path}).load_server_credential() == OAuthToken(
        b"sk-ant-oat01-SERVER"
    )
    env = {"EXT_PROC_SERVER_CREDENTIAL": "sk-ant-api03-SERVER"}
    assert Config.load(env=env).load_server_credential() == ApiKey(b"sk-ant-api03-SERVER")


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    config = Config.load(env={"EXT_PROC_SERVER_CREDENTIAL": "sk-ant-api03-SECRET", "EXT_PROC_SEAL_KEYS": KEY2})
    assert "SECRET" not in repr(config) and KEY2 not in repr(config)
    with pytest.raises(ConfigError) as info:
        Config.load(env={"EXT_PROC_SERVER_CREDENTIAL": "sk-master-SECRET"})
    assert "SECRET" not in str(info.value) and "not an Anthropic credential" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('handoff_header = "credential-handoff"', "must be a lower-case header name starting with 'x-'"),
        ("seal_ttl_seconds = 0", "seal_ttl_seconds must be a positive"),
        ('seal_ttl_seconds = "soon"', "seal_ttl_seconds: expected a whole number"),
        ('seal_keys = ["bm90IGEga2V5"]', "seal key #1: must decode to 32 bytes"),
        ('seal_keys = ["%%%"]', "seal key #1: not base64"),
        ("bogus = 1", "unknown setting(s) bogus"),
        ('oauth_prefix = "oat"', "oauth_prefix must start with anthropic_prefix"),
        ('egress_allowlist = ["x-credential-handoff"]', "must not contain the handoff header"),
        ('litellm_headers = ["bad header"]', "header name 'bad header'"),
        ('log_level = "LOUD"', "log_level must be one of"),
        ('event_loop = "trio"', "event_loop must be 'uvloop' or 'asyncio'"),
        ("listen = [", "not valid TOML"),
        ('seal_key_file = "/nonexistent/keys"', "seal_key_file /nonexistent/keys: No such file"),
        ("seal_max_opens = 0", "seal_max_opens must be at least 1"),
        ("drain_seconds = -1", "grace_seconds and drain_seconds not negative"),
        ('egress_token = "short"', "egress token: must be at least 32 characters"),
        ('egress_token = "sk-' + "a" * 40 + '"', "must not look like an Anthropic or LiteLLM key"),
        ('egress_token = "x' + "a" * 40 + '"\negress_token_file = "/t"', "set egress_token or egress_token_file"),
        ('secret_patterns = ["(unclosed"]', "secret_patterns '(unclosed': not a regular expression"),
    ],
)
def test_bad_config_is_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        Config.load(file, {})
    assert message in str(info.value)


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
    loaders: dict[str, Callable[[], object]] = {
        "server_credential_file": lambda: Config(server_credential_file=path).load_server_credential(),
        "egress_token_file": lambda: Config(egress_token_file=path).load_egress_token(),
        "seal_key_file": lambda: Config(seal_key_file=path).keyring(),
        "litellm_key_file": lambda: Config(litellm_key_file=path).load_litellm_keys(),
    }
    return loaders[setting]()


@pytest.mark.parametrize(("setting", "value"), SECRET_SETTINGS)
@pytest.mark.parametrize(
    ("mode", "owner", "allowed"),
    [(0o600, "self", True), (0o400, "self", True), (0o644, "self", False), (0o604, "self", False),
     (0o640, "root", True), (0o440, "root", True), (0o644, "root", False), (0o640, "other", False)],
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
