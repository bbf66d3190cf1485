"""Ingress leg (I1-I4), policy ``other``, configuration errors, and the real Claude Code header sets."""

from __future__ import annotations

import json

import pytest

from ext_proc.headers import HeaderView
from ext_proc.rules import Source
from tests.support import fixtures
from tests.support.decisions import KEYRING, NOW, context, handoff, run

H = "x-credential-handoff"
OAUTH = "sk-ant-oat01-CLIENTOAUTH"
KEY = "sk-ant-api03-CLIENTKEY"
LITELLM_KEY = ("x-litellm-api-key", "sk-litellm-CLIENT")


def opened(out: HeaderView) -> list[tuple[str, bytes]]:
    (value,) = out.get_all(H)
    return list(KEYRING.open(value, NOW).entries)


def test_i1_client_handoff_removed_when_nothing_to_seal() -> None:
    decision, out = run("ingress", "", HeaderView.of((H, "forged"), ("x-litellm-api-key", "sk-litellm-1")))
    assert decision.remove == (H,) and H not in out


def test_i1_client_handoff_replaced_by_ours() -> None:
    forged = handoff(("x-api-key", "sk-ant-api03-ATTACKER"))
    _, out = run("ingress", "", HeaderView.of((H, forged), (H, "junk"), ("x-api-key", KEY), LITELLM_KEY))
    assert out.get_all(H) != (forged.encode(),) and opened(out) == [("x-api-key", KEY.encode())]


def test_i2_both_anthropic_credentials_sealed_with_origin_and_removed() -> None:
    headers = HeaderView.of(("X-Api-Key", KEY), ("Authorization", f"bearer {OAUTH}"), ("x-app", "cli"), LITELLM_KEY)
    decision, out = run("ingress", "", headers)
    assert opened(out) == [("x-api-key", KEY.encode()), ("authorization", OAUTH.encode())]
    assert "x-api-key" not in out and "authorization" not in out
    assert set(decision.remove) == {"x-api-key", "authorization"}
    assert [s.split("=")[0] for s in decision.audit.sealed] == ["x-api-key", "authorization"]


def test_i3_foreign_credentials_stay_for_litellm() -> None:
    headers = HeaderView.of(("x-api-key", "sk-litellm-virtual"), ("authorization", f"Bearer {OAUTH}"))
    _, out = run("ingress", "", headers)
    assert out.get_all("x-api-key") == (b"sk-litellm-virtual",)
    assert "authorization" not in out and opened(out) == [("authorization", OAUTH.encode())]


def test_i3_litellm_master_key_as_bearer_stays() -> None:
    headers = HeaderView.of(("authorization", "Bearer sk-master-1234"))
    decision, out = run("ingress", "", headers)
    assert decision.remove == () and decision.set == () and list(out) == list(headers)


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [("x-api-key", KEY, "sk-litellm-1"), ("authorization", f"Bearer {OAUTH}", "Bearer sk-master-1")],
)
def test_i4_conflicting_duplicates_rejected_with_anthropic_json(name: str, a: str, b: str) -> None:
    decision, _ = run("ingress", "", HeaderView.of((name, a), (name, b)))
    assert decision.rejection is not None and decision.rejection.status == 400
    body = json.loads(decision.rejection.body())
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert name in body["error"]["message"] and KEY not in body["error"]["message"]
    assert decision.set == () and decision.remove == ()


def test_i4_identical_duplicates_are_one_value() -> None:
    _, out = run("ingress", "", HeaderView.of(("x-api-key", KEY), ("x-api-key", f" {KEY} "), LITELLM_KEY))
    assert opened(out) == [("x-api-key", KEY.encode())]


@pytest.mark.parametrize(
    "headers",
    [
        (("x-api-key", KEY),),
        (("authorization", f"Bearer {OAUTH}"),),
        (("x-api-key", KEY), ("authorization", f"Bearer {OAUTH}")),
        (("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", "")),
        (("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", "Bearer None")),
        (("authorization", f"Bearer {OAUTH}"), ("x-litellm-api-key", "Bearer\tNone")),
        (("authorization", f"Bearer {OAUTH}"), ("x-api-key", "null")),
        (("x-api-key", KEY), ("authorization", "Bearer")),
        (("x-api-key", KEY), ("authorization", "bearer  undefined"), ("api-key", " ")),
    ],
)
def test_i8_a_clients_own_credential_without_a_litellm_key_is_refused_saying_how_to_send_one(
    headers: tuple[tuple[str, str], ...],
) -> None:
    """LiteLLM with a master key answered such a request (its only key sealed away) with a bare 500 on 1.108.7,
    which Claude Code retried for minutes; the ingress knows the case and says what to do."""
    decision, _ = run("ingress", "", HeaderView.of(*headers))
    assert decision.rejection is not None and decision.rejection.status == 400
    assert decision.rejection.reason == "no-litellm-key" and decision.set == () and decision.remove == ()
    body = json.loads(decision.rejection.body())
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == (
        "This gateway needs a LiteLLM key next to your own Anthropic credential: LiteLLM authenticates you with it, "
        "and never sees your Anthropic credential. Send it as x-litellm-api-key: Bearer <LiteLLM key> (Claude "
        "Code: ANTHROPIC_CUSTOM_HEADERS='x-litellm-api-key: Bearer <LiteLLM key>')."
    )
    assert KEY not in body["error"]["message"] and OAUTH not in body["error"]["message"]


@pytest.mark.parametrize(
    "key",
    [
        ("x-litellm-api-key", "Bearer sk-litellm-1"),
        ("x-litellm-api-key", "sk-litellm-1"),
        ("authorization", "Bearer sk-litellm-1"),
        ("authorization", "Basic dXNlcjpwYXNz"),  # another scheme: LiteLLM's to judge
        ("api-key", "azure-style"),
        ("x-goog-api-key", "g"),
        ("ocp-apim-subscription-key", "apim"),
        ("x-corp-key", "sk-litellm-1"),  # a header the operator named (litellm_headers)
    ],
)
def test_i8_any_litellm_key_beside_it_lets_the_request_through(key: tuple[str, str]) -> None:
    credential = ("x-api-key", KEY) if key[0] == "authorization" else ("authorization", f"Bearer {OAUTH}")
    ctx = context(litellm_headers=("api-key", "x-goog-api-key", "ocp-apim-subscription-key", "x-corp-key"))
    decision, out = run("ingress", "", HeaderView.of(credential, key), ctx)
    assert decision.rejection is None and out.get_all(key[0]) == (key[1].encode(),)
    assert [name for name, _ in opened(out)] == [credential[0]]


def test_i8_off_when_litellm_asks_no_key_and_never_for_requests_without_a_client_credential() -> None:
    decision, out = run("ingress", "", HeaderView.of(("x-api-key", KEY)), context(litellm_requires_key=False))
    assert decision.rejection is None and opened(out) == [("x-api-key", KEY.encode())]
    # Without an Anthropic credential, a missing LiteLLM key is LiteLLM's to answer.
    decision, _ = run("ingress", "", HeaderView.of(("content-type", "application/json")))
    assert decision.rejection is None


def test_other_policy_strips_ours_and_anthropic_keeps_provider_auth() -> None:
    headers = HeaderView.of(
        (H, "v1.anything-not-opened"),
        ("x-litellm-api-key", "sk-litellm-1"),
        ("x-api-key", KEY),
        ("x-leak", OAUTH),
        ("x-bearer-leak", f"Bearer {OAUTH}"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIA/..."),
        ("x-amz-date", "20261126T000000Z"),
        ("cookie", "a=b"),
        ("host", "bedrock"),
    )
    decision, out = run("egress", "other", headers)
    assert decision.rejection is None
    assert set(decision.remove) == {H, "x-litellm-api-key", "x-api-key", "x-leak", "x-bearer-leak"}
    assert [n for n, _ in out] == ["authorization", "x-amz-date", "cookie", "host"]
    assert decision.audit.source == Source.NONE


@pytest.mark.parametrize(
    ("leg", "policy", "reason"),
    [
        ("sideways", "anthropic", "config-leg"),
        ("", "", "config-leg"),
        ("egress", "", "config-policy"),
        ("egress", "gemini", "config-policy"),
        ("ingress", "bogus", "config-policy"),
    ],
)
def test_unknown_leg_or_policy_fails_closed(leg: str, policy: str, reason: str) -> None:
    decision, _ = run(leg, policy, HeaderView.of(("x-api-key", KEY)))
    assert decision.rejection is not None
    assert (decision.rejection.status, decision.rejection.error_type, decision.rejection.reason) == (
        500,
        "api_error",
        reason,
    )


def test_prefixes_configurable() -> None:
    ctx = context(anthropic_prefix="corp-", oauth_prefix="corp-oat")
    _, out = run("egress", "anthropic", HeaderView.of(("authorization", "Bearer corp-oat-1"), ("x-api-key", KEY)), ctx)
    assert out.get_all("authorization") == (b"Bearer corp-oat-1",) and "x-api-key" not in out


@pytest.mark.parametrize(
    ("fixture", "credential", "header"),
    [
        (fixtures.CLAUDE_CODE_API_KEY, b"sk-ant-api03-FAKEKEY", "x-api-key"),
        (fixtures.CLAUDE_CODE_OAUTH, b"Bearer sk-ant-oat01-FAKEOAUTH", "authorization"),
    ],
)
def test_claude_code_through_both_legs(fixture: str, credential: bytes, header: str) -> None:
    recorded = fixtures.load(fixture)
    client = HeaderView.of(*recorded.headers)
    _, at_litellm = run("ingress", "", client)
    assert "x-api-key" not in at_litellm and "authorization" not in at_litellm
    assert at_litellm.get_all("x-litellm-api-key") == (b"sk-litellm-1234",)
    # LiteLLM (with a placeholder key) calls the egress leg with its own key plus what it forwarded.
    litellm_out = HeaderView([*at_litellm, ("x-api-key", b"placeholder-sealed-by-sidecar")])
    _, upstream = run("egress", "anthropic", litellm_out)
    assert upstream.get_all(header) == (credential,)
    assert "x-litellm-api-key" not in upstream and H not in upstream
    expected = [(k.lower(), v.encode()) for k, v in recorded.without("x-api-key", "authorization", "x-litellm-api-key")]
    assert [(k, v) for k, v in upstream if k != header] == [(k, v) for k, v in expected if k != "connection"]
    beta = upstream.get_all("anthropic-beta")[0].split(b",")
    assert (b"oauth-2025-04-20" in beta) == (header == "authorization")
