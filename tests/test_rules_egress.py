"""Egress leg, policy ``anthropic``: the scenario matrix, one row per case, every numbered rule covered.

Rule numbers refer to docs/rules.md (egress E1-E5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from ext_proc.config import Config
from ext_proc.credentials import ApiKey, Credential, OAuthToken
from ext_proc.headers import HeaderView
from ext_proc.reload import rule_context
from ext_proc.rules import Source, answer
from ext_proc.seal import Keyring
from ext_proc.secrets import Secrets
from tests.support.decisions import KEY_B, NOW, context, handoff, run

H = "x-credential-handoff"
OAUTH = "sk-ant-oat01-CLIENTOAUTH"
KEY = "sk-ant-api03-CLIENTKEY"
SERVER_KEY = "sk-ant-api03-LITELLMSERVER"
SIDECAR_KEY = "sk-ant-api03-SIDECAR"
SIDECAR_OAUTH = "sk-ant-oat01-SIDECAR"
BETA = "claude-code-20250219,interleaved-thinking-2025-05-14"
FLAG = "oauth-2025-04-20"


@dataclass(frozen=True)
class Case:
    id: str
    rule: str
    headers: tuple[tuple[str, str], ...]
    sealed: tuple[tuple[str, str], ...] = ()
    server: Credential | None = None
    source: Source = Source.NONE
    # Exactly the credential headers (x-api-key, authorization, anthropic-beta) that must leave; absent = must not.
    out: dict[str, str] = field(default_factory=dict)


CASES = [
    # E3: priority 1 beats everything below it.
    Case(
        "sealed-key-beats-all",
        "E3.1",
        (("x-api-key", SERVER_KEY), ("authorization", "Bearer sk-ant-oat01-OTHER"), ("anthropic-beta", BETA)),
        sealed=(("x-api-key", KEY), ("authorization", f"{OAUTH}")),
        server=ApiKey(SIDECAR_KEY.encode()),
        source=Source.SEALED_X_API_KEY,
        out={"x-api-key": KEY, "anthropic-beta": BETA},
    ),
    Case(
        "sealed-oauth-beats-litellm-server-key",
        "E3.2",
        (("x-api-key", SERVER_KEY), ("anthropic-beta", BETA)),
        sealed=(("authorization", OAUTH),),
        source=Source.SEALED_AUTHORIZATION,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": f"{BETA},{FLAG}"},
    ),
    Case(
        "request-key-beats-request-oauth",
        "E3.3",
        (("x-api-key", SERVER_KEY), ("authorization", f"Bearer {OAUTH}"), ("anthropic-beta", f"{FLAG},{BETA}")),
        server=ApiKey(SIDECAR_KEY.encode()),
        source=Source.REQUEST_X_API_KEY,
        out={"x-api-key": SERVER_KEY, "anthropic-beta": BETA},
    ),
    Case(
        "request-oauth-over-placeholder",
        "E3.4",
        (("x-api-key", "placeholder-sealed-by-sidecar"), ("authorization", f"Bearer {OAUTH}")),
        server=ApiKey(SIDECAR_KEY.encode()),
        source=Source.REQUEST_AUTHORIZATION,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": FLAG},
    ),
    Case(
        "server-key-when-litellm-sends-None",
        "E3.5",
        (("x-api-key", "None"), ("anthropic-beta", BETA)),
        server=ApiKey(SIDECAR_KEY.encode()),
        source=Source.SERVER,
        out={"x-api-key": SIDECAR_KEY, "anthropic-beta": BETA},
    ),
    Case(
        "server-oauth-written-as-bearer",
        "E3.5",
        (("x-api-key", "placeholder"),),
        server=OAuthToken(SIDECAR_OAUTH.encode()),
        source=Source.SERVER,
        out={"authorization": f"Bearer {SIDECAR_OAUTH}", "anthropic-beta": FLAG},
    ),
    Case(
        "none-goes-on-without-credential",
        "E3.6",
        (("x-api-key", "None"), ("authorization", "Bearer sk-master-1234"), ("anthropic-beta", f"{FLAG},{BETA}")),
        source=Source.NONE,
        out={"anthropic-beta": BETA},
    ),
    # E4: written in the form its kind needs.
    Case(
        "oauth-in-x-api-key-sent-as-bearer",
        "E4",
        (("x-api-key", OAUTH),),
        source=Source.REQUEST_X_API_KEY,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": FLAG},
    ),
    Case(
        "sealed-oauth-from-x-api-key-sent-as-bearer",
        "E4",
        (("x-api-key", "placeholder"),),
        sealed=(("x-api-key", OAUTH),),
        source=Source.SEALED_X_API_KEY,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": FLAG},
    ),
    Case(
        "key-in-bearer-sent-as-x-api-key",
        "E4",
        (("authorization", f"Bearer {KEY}"),),
        source=Source.REQUEST_AUTHORIZATION,
        out={"x-api-key": KEY},
    ),
    Case(
        "beta-flag-kept-in-place-no-duplicate",
        "E4",
        (("authorization", f"Bearer {OAUTH}"), ("anthropic-beta", f"a,{FLAG},b,a")),
        source=Source.REQUEST_AUTHORIZATION,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": f"a,{FLAG},b"},
    ),
    Case(
        "beta-split-across-headers-merged",
        "E4",
        (("authorization", f"Bearer {OAUTH}"), ("anthropic-beta", "a, b"), ("anthropic-beta", f"b,{FLAG}")),
        source=Source.REQUEST_AUTHORIZATION,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": f"a,b,{FLAG}"},
    ),
    Case(
        "beta-header-dropped-when-only-flag-and-key",
        "E4",
        (("x-api-key", KEY), ("anthropic-beta", FLAG)),
        source=Source.REQUEST_X_API_KEY,
        out={"x-api-key": KEY},
    ),
    # E2 + vocabulary: classification after trimming, Bearer in any case, foreign stripped.
    Case(
        "bearer-scheme-any-case-and-whitespace",
        "vocab",
        (("Authorization", f"  bEaReR   {OAUTH}  "),),
        source=Source.REQUEST_AUTHORIZATION,
        out={"authorization": f"Bearer {OAUTH}", "anthropic-beta": FLAG},
    ),
    Case(
        "x-api-key-trimmed",
        "vocab",
        (("X-Api-Key", f" \t{KEY} "),),
        source=Source.REQUEST_X_API_KEY,
        out={"x-api-key": KEY},
    ),
    Case("basic-auth-is-foreign", "E2", (("authorization", "Basic c2stYW50LWFwaQ=="),), source=Source.NONE),
    Case("litellm-master-bearer-stripped", "E2", (("authorization", "Bearer sk-master-1234"),), source=Source.NONE),
    Case("litellm-virtual-key-in-x-api-key-stripped", "E2", (("x-api-key", "sk-litellm-1234"),), source=Source.NONE),
    # E5: never emitted.
    Case("empty-never-emitted", "E5", (("x-api-key", ""), ("authorization", "Bearer ")), source=Source.NONE),
    Case("null-never-emitted", "E5", (("x-api-key", "null"), ("authorization", "Bearer undefined"))),
    Case("None-never-emitted", "E5", (("x-api-key", "None"), ("authorization", "Bearer None"))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.rule}-{c.id}")
def test_matrix(case: Case) -> None:
    headers = list(case.headers)
    if case.sealed:
        headers.append((H, handoff(*case.sealed)))
    decision, out = run("egress", "anthropic", HeaderView.of(*headers), context(case.server))
    assert decision.rejection is None
    assert decision.audit.source == case.source
    # E9: the answer is the client's exactly when a client's own credential leaves.
    assert decision.on_clients_credential == (case.source not in (Source.SERVER, Source.NONE))
    got = {name: b",".join(out.get_all(name)).decode() for name in ("x-api-key", "authorization", "anthropic-beta")}
    assert {k: v for k, v in got.items() if v} == case.out
    assert all(len(out.get_all(n)) <= 1 for n in ("x-api-key", "authorization", "anthropic-beta"))
    assert H not in out


ALL_STRIPPED = (
    ("x-litellm-api-key", "sk-litellm-1234"),
    ("api-key", "azure"),
    ("x-goog-api-key", "goog"),
    ("ocp-apim-subscription-key", "apim"),
    ("cookie", "session=abc"),
    ("x-custom-probe", "probe1"),
    ("x-forwarded-for", "10.0.0.1"),
    ("litellm-trace", "t"),
)
ALL_KEPT = (
    (":method", "POST"),
    (":path", "/v1/messages"),
    (":authority", "api.anthropic.com"),
    ("host", "api.anthropic.com"),
    ("content-length", "12"),
    ("transfer-encoding", "chunked"),
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip"),
    ("user-agent", "claude-cli/2.1.197"),
    ("anthropic-version", "2023-06-01"),
    ("anthropic-dangerous-direct-browser-access", "true"),
    ("x-app", "cli"),
    ("x-claude-code-session-id", "s"),
    ("x-stainless-lang", "js"),
    ("x-stainless-retry-count", "0"),
    ("traceparent", "00-abc-def-01"),
    ("tracestate", "k=v"),
    ("x-request-id", "rid-1"),
)


def test_e2_strips_litellm_cookie_and_unlisted_keeps_allowlist_and_envoy_owned() -> None:
    headers = HeaderView.of(*ALL_STRIPPED, *ALL_KEPT, ("x-api-key", KEY))
    decision, out = run("egress", "anthropic", headers)
    assert sorted(decision.remove) == sorted(n for n, _ in ALL_STRIPPED)
    assert [(n, v.decode()) for n, v in out if n != "x-api-key"] == list(ALL_KEPT)
    assert decision.audit.removed == tuple(n for n, _ in ALL_STRIPPED)


def test_e2_allowlist_is_configurable() -> None:
    headers = HeaderView.of(("x-custom-probe", "1"), ("x-app", "cli"), ("x-api-key", KEY))
    _, out = run("egress", "anthropic", headers, context(egress_allowlist=("x-custom-*",)))
    assert [n for n, _ in out] == ["x-custom-probe", "x-api-key"]


def test_e2_extra_litellm_headers_configurable_and_x_litellm_always_stripped() -> None:
    headers = HeaderView.of(("x-litellm-api-key", "k"), ("x-my-proxy-key", "k"), ("api-key", "k"))
    ctx = context(litellm_headers=("x-my-proxy-key",), egress_allowlist=("x-*", "api-key"))
    decision, _ = run("egress", "anthropic", headers, ctx)
    assert set(decision.remove) == {"x-litellm-api-key", "x-my-proxy-key"}


def test_e2_oauth_flag_added_even_when_beta_not_allowlisted() -> None:
    headers = HeaderView.of(("authorization", f"Bearer {OAUTH}"), ("anthropic-beta", "x"))
    _, out = run("egress", "anthropic", headers, context(egress_allowlist=("content-type",)))
    assert out.get_all("anthropic-beta") == (FLAG.encode(),)


def test_e4_beta_untouched_when_nothing_changes() -> None:
    decision, _ = run("egress", "anthropic", HeaderView.of(("x-api-key", KEY), ("anthropic-beta", BETA)))
    assert decision.remove == () and decision.set == ((("x-api-key", KEY.encode())),)


def test_sets_replace_and_never_overlap_removals() -> None:
    decision, _ = run("egress", "anthropic", HeaderView.of(("authorization", f"Bearer {OAUTH}"), ("x-api-key", "x")))
    assert not set(decision.remove) & {n for n, _ in decision.set}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], "seal-tampered"),
        (lambda t: t + "!", "seal-malformed"),
        (lambda t: "v2." + t[3:], "seal-malformed"),
        (lambda t: "not a seal", "seal-malformed"),
        (lambda t: handoff(("x-api-key", KEY), keyring=Keyring([KEY_B], 600)), "seal-unknown-key"),
        (lambda t: handoff(("x-api-key", KEY), now=NOW - 601), "seal-expired"),
        (lambda t: handoff(("x-api-key", KEY), now=NOW + 3600), "seal-expired"),
    ],
    ids=["tampered", "non-alphabet", "version", "garbage", "unknown-key", "expired", "from-the-future"],
)
def test_e1_untrusted_handoff_is_400_and_never_forwarded(mutate: object, reason: str) -> None:
    token = mutate(handoff(("x-api-key", KEY)))  # type: ignore[operator]
    decision, _ = run("egress", "anthropic", HeaderView.of((H, token), ("x-api-key", SERVER_KEY)))
    assert decision.rejection is not None
    assert decision.rejection.status == 400 and decision.rejection.reason == reason
    assert json.loads(decision.rejection.body()) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": decision.rejection.message},
    }
    assert decision.set == () and decision.remove == ()
    assert KEY not in decision.rejection.message and token not in decision.rejection.message


def test_e1_handoff_opened_and_removed_even_when_it_holds_nothing_usable() -> None:
    decision, out = run("egress", "anthropic", HeaderView.of((H, handoff()), ("x-api-key", SERVER_KEY)))
    assert decision.audit.source == Source.REQUEST_X_API_KEY and H not in out


def test_e1_handoff_lifetime_boundary() -> None:
    at_limit = handoff(("x-api-key", KEY), now=NOW - 600)
    decision, _ = run("egress", "anthropic", HeaderView.of((H, at_limit)))
    assert decision.audit.source == Source.SEALED_X_API_KEY


def test_duplicate_identical_handoff_is_fine_conflicting_is_400() -> None:
    a, b = handoff(("x-api-key", KEY)), handoff(("x-api-key", KEY))
    ok, _ = run("egress", "anthropic", HeaderView.of((H, a), (H, a)))
    assert ok.rejection is None
    bad, _ = run("egress", "anthropic", HeaderView.of((H, a), (H, b)))
    assert bad.rejection is not None and bad.rejection.status == 400


@pytest.mark.parametrize("name", ["x-api-key", "authorization"])
def test_conflicting_credential_duplicates_are_400_on_egress(name: str) -> None:
    value = KEY if name == "x-api-key" else f"Bearer {OAUTH}"
    decision, _ = run("egress", "anthropic", HeaderView.of((name, value), (name, value + "2")))
    assert decision.rejection is not None
    assert (decision.rejection.status, decision.rejection.error_type) == (400, "invalid_request_error")


def test_credential_outside_the_alphabet_is_refused_never_passed_on() -> None:
    """E6: bytes outside the credential alphabet after the prefix (here not even UTF-8) are no credential."""
    raw = b"sk-ant-api03-\xff\xfe\x80"
    decision, _ = run("egress", "anthropic", HeaderView.of(("x-api-key", raw), ("x-bin", b"\xc3\x28")))
    assert decision.rejection is not None and decision.rejection.reason == "malformed-x-api-key"
    decision, _ = run("egress", "anthropic", HeaderView.of((H, handoff(("x-api-key", raw)))))
    assert decision.rejection is not None and decision.rejection.reason == "seal-malformed"


def test_non_utf8_header_values_round_trip_exactly() -> None:
    headers = HeaderView.of(("x-api-key", KEY), ("authorization", "Bearer sk-litellm-1"), ("x-bin", b"\xc3\x28"))
    decision, out = run("ingress", "", headers)
    assert out.get_all("x-bin") == (b"\xc3\x28",)
    assert decision.rejection is None


def test_audit_has_fingerprint_never_value() -> None:
    decision, _ = run("egress", "anthropic", HeaderView.of(("x-api-key", KEY), ("x-request-id", "rid-7")))
    audit = decision.audit.as_dict()
    assert KEY not in json.dumps(audit)
    assert audit["fingerprint"].startswith("api-key:...TKEY:") and audit["request_id"] == "rid-7"
    assert audit["source"] == "request-x-api-key"


def test_a_rule_context_is_its_own_and_shows_no_secret() -> None:
    """Its repr could reach a log or a traceback: the LiteLLM keys, the egress token, the server key and the memos
    (which hold header values seen) stay out of it."""
    secrets = Secrets(
        keyring=Keyring.generate(60), server_credential=ApiKey(SERVER_KEY.encode()),
        egress_token=b"EGRESS-TOKEN-SECRET", litellm_keys=(b"MASTERKEYSECRET",),
    )  # fmt: skip
    ctx = rule_context(Config(), secrets)
    headers = HeaderView.of(("x-api-key", "EGRESS-TOKEN-SECRET"), ("x-stainless-a", KEY), ("x-stainless-b", "short"),
                            ("x-stainless-masterkeysecret", "v"), ("x-other", "MASTERKEYSECRET"))  # fmt: skip
    decision, _ = run("egress", "anthropic", headers, ctx)
    assert decision.rejection is None and ctx.holds_secret(KEY.encode()) and ctx.strips_on_egress("x-other")
    shown = repr(ctx)
    for secret in ("EGRESS-TOKEN-SECRET", "MASTERKEYSECRET", "masterkeysecret", "LITELLMSERVER", "CLIENTKEY", "short"):
        assert secret not in shown


@pytest.mark.parametrize("value", ["None", "null", "NULL", "undefined", ""])
def test_e5_nullish_never_emitted_even_when_prefixes_would_match(value: str) -> None:
    """E5 holds on its own, not only because the default prefixes happen not to match these words."""
    ctx = context(anthropic_prefix="n", oauth_prefix="nu")
    lowered = HeaderView.of(("x-api-key", value.lower()), ("authorization", f"Bearer {value.lower()}"))
    decision, out = run("egress", "anthropic", lowered, ctx)
    assert decision.audit.source == Source.NONE
    assert "x-api-key" not in out and "authorization" not in out


def test_e2_cookie_litellm_and_foreign_credentials_go_even_when_allowlisted() -> None:
    """The allowlist widens what may pass; it never lets the headers E2 names explicitly through."""
    allow = ("cookie", "x-litellm-api-key", "api-key", "x-api-key", "authorization", "content-type")
    headers = HeaderView.of(
        ("cookie", "s=1"), ("x-litellm-api-key", "k"), ("api-key", "azure"),
        ("authorization", "Bearer sk-master-1234"), ("x-api-key", "None"), ("content-type", "application/json"),
    )  # fmt: skip
    decision, out = run("egress", "anthropic", headers, context(egress_allowlist=allow))
    assert [n for n, _ in out] == ["content-type"]
    assert set(decision.remove) == {"cookie", "x-litellm-api-key", "api-key", "authorization", "x-api-key"}


ANSWERS = [
    # (id, status and headers Anthropic answered with, what E9 sets)
    ("revoked token", ((":status", "401"),), (("retry-after", "0"),)),
    ("model not visible", ((":status", "404"),), (("retry-after", "0"),)),
    ("bad request", ((":status", "400"),), (("retry-after", "0"),)),
    (
        "over rate limit",
        ((":status", "429"), ("retry-after", "30")),
        (("retry-after", "0"), ("retry-after-ms", "30000")),
    ),
    (
        "its ms wait kept",
        ((":status", "429"), ("retry-after", "30"), ("retry-after-ms", "29500")),
        (("retry-after", "0"),),
    ),
    (
        "a date is not moved",
        ((":status", "429"), ("retry-after", "Fri, 04 Dec 2026 20:00:00 GMT")),
        (("retry-after", "0"),),
    ),
    ("one second", ((":status", "429"), ("retry-after", "1")), (("retry-after", "0"), ("retry-after-ms", "1000"))),
    ("zero stays zero", ((":status", "429"), ("retry-after", "0")), (("retry-after", "0"),)),
    (
        "surrounding spaces",
        ((":status", "429"), ("retry-after", " 7 ")),
        (("retry-after", "0"), ("retry-after-ms", "7000")),
    ),
    (
        "nine digits",
        ((":status", "429"), ("retry-after", "999999999")),
        (("retry-after", "0"), ("retry-after-ms", "999999999000")),
    ),
    ("ten digits are no wait", ((":status", "429"), ("retry-after", "9999999999")), (("retry-after", "0"),)),
    (
        "two waits, neither moved",
        ((":status", "429"), ("retry-after", "3"), ("retry-after", "4")),
        (("retry-after", "0"),),
    ),
    ("499", ((":status", "499"),), (("retry-after", "0"),)),
    ("success", ((":status", "200"), ("retry-after", "5")), ()),
    ("overloaded is Anthropic's", ((":status", "529"), ("retry-after", "5")), ()),
    ("server error is Anthropic's", ((":status", "500"),), ()),
    ("399", ((":status", "399"),), ()),
    ("not digits", ((":status", "4xx"),), ()),
    ("four digits", ((":status", "4000"),), ()),
    ("two statuses", ((":status", "401"), (":status", "401")), ()),
    ("no status", (("retry-after", "5"),), ()),
]


@pytest.mark.parametrize(("headers", "sets"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS])
def test_e9_a_4xx_answer_to_a_clients_credential_tells_litellm_not_to_cool_down(
    headers: tuple[tuple[str, str], ...], sets: tuple[tuple[str, str], ...]
) -> None:
    assert answer(HeaderView.of(*headers)) == tuple((k, v.encode()) for k, v in sets)
