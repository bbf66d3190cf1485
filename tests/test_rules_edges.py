"""Credential paths outside the designed matrix (docs/rules.md E6, E7, I5, I6, O3, S1): each an attack, as a table.

- E6/I5/O3: a credential header holding more than one token (Envoy's comma-joined repeats, HTTP/1 obs-fold, mixed
  schemes) or a token outside the credential alphabet is refused on every leg and policy, never read in part.
- E7/I6: an Anthropic credential or a LiteLLM key in any other header (or the URL) never crosses.
- I7: a client credential is only let through on routes that carry it to the egress.
- S1: a handoff opens at most ``seal_max_opens`` times.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from ext_proc.config import Config
from ext_proc.credentials import ApiKey
from ext_proc.headers import HeaderView
from ext_proc.metrics import Metrics
from ext_proc.reload import LiveRules, rule_context
from ext_proc.routes import CARRIES, CLASSIFIED, RELEASES, REROUTES, Entry, Route, Routes, Table, route_path
from ext_proc.rules import name_bytes
from ext_proc.seal import MAX_OPENS_PER_SECOND, Keyring, OpenCounter, SealError, SealFailure, tracker_capacity
from ext_proc.secrets import Secrets
from tests.support.decisions import KEY_A, KEYRING, NOW, context, handoff, run
from tests.support.litellm_proxy import RELEASES as TESTED

H = "x-credential-handoff"
OAUTH = "sk-ant-oat01-CLIENTOAUTH"
OAUTH_B = "sk-ant-oat01-OTHEROAUTH"
KEY = "sk-ant-api03-CLIENTKEY"
LITELLM = "sk-litellm-virtualkey1"
LEGS = [("ingress", ""), ("egress", "anthropic"), ("egress", "other")]

MORE_THAN_ONE = [
    # (id, headers, reason)
    ("oauth+litellm joined", (("authorization", f"Bearer {OAUTH},Bearer {LITELLM}"),), "multiple-authorization"),
    ("litellm+oauth joined", (("authorization", f"Bearer {LITELLM}, Bearer {OAUTH}"),), "multiple-authorization"),
    ("two oauth joined", (("authorization", f"Bearer {OAUTH},Bearer {OAUTH_B}"),), "multiple-authorization"),
    ("oauth+litellm repeated", (("authorization", f"Bearer {OAUTH}"), ("authorization", f"Bearer {LITELLM}")),
     "conflict-authorization"),
    ("bearer then bare token", (("authorization", f"Bearer {OAUTH},{LITELLM}"),), "multiple-authorization"),
    ("basic then bearer", (("authorization", f"Basic abc,Bearer {OAUTH}"),), "multiple-authorization"),
    ("bearer then basic", (("authorization", f"Bearer {OAUTH}, Basic abc"),), "multiple-authorization"),
    ("bearer obs-fold", (("authorization", f"Bearer {OAUTH} {LITELLM}"),), "multiple-authorization"),
    ("key+litellm joined", (("x-api-key", f"{KEY}, {LITELLM}"),), "multiple-x-api-key"),
    ("litellm+key joined", (("x-api-key", f"{LITELLM},{KEY}"),), "multiple-x-api-key"),
    ("key obs-fold", (("x-api-key", f"{KEY} {LITELLM}"),), "multiple-x-api-key"),
    ("key repeated", (("x-api-key", KEY), ("x-api-key", LITELLM)), "conflict-x-api-key"),
    ("two litellm keys joined", (("x-api-key", f"{LITELLM},sk-litellm-other"),), "multiple-x-api-key"),
    ("key outside alphabet", (("x-api-key", f"{KEY};{LITELLM}"),), "malformed-x-api-key"),
    ("oauth outside alphabet", (("authorization", f"Bearer {OAUTH}\u00e9"),), "malformed-authorization"),
    ("prefix hidden in key", (("x-api-key", f"x{KEY}"),), "malformed-x-api-key"),
    ("prefix hidden in basic", (("authorization", f"Basic {KEY}"),), "malformed-authorization"),
]  # fmt: skip


@pytest.mark.parametrize(("leg", "policy"), LEGS)
@pytest.mark.parametrize(("headers", "reason"), [c[1:] for c in MORE_THAN_ONE], ids=[c[0] for c in MORE_THAN_ONE])
def test_e6_i5_o3_a_credential_header_holds_one_token_or_the_request_is_refused(
    leg: str, policy: str, headers: tuple[tuple[str, str], ...], reason: str
) -> None:
    decision, _ = run(leg, policy, HeaderView.of(*headers, ("x-litellm-api-key", LITELLM)))
    assert decision.rejection is not None, decision.audit
    assert (decision.rejection.status, decision.rejection.reason) == (400, reason)
    body = json.loads(decision.rejection.body())
    assert body["error"]["type"] == "invalid_request_error"
    header = reason.split("-", 1)[1]
    assert header in body["error"]["message"]
    assert not any(secret in decision.rejection.body().decode() for secret in (KEY, OAUTH, LITELLM))
    assert decision.set == () and decision.remove == ()
    assert decision.audit.outcome == "reject" and decision.audit.reason == reason


@pytest.mark.parametrize(
    ("name", "value", "token"),
    [
        ("x-api-key", f"{KEY}, {KEY}", KEY),
        ("x-api-key", f"{KEY},", KEY),
        ("authorization", f"Bearer {OAUTH},Bearer {OAUTH}", OAUTH),
        ("authorization", f"bearer {OAUTH}, BEARER  {OAUTH}", OAUTH),
    ],
)
def test_i4_identical_repeats_joined_by_envoy_are_one_value(name: str, value: str, token: str) -> None:
    _, out = run("ingress", "", HeaderView.of((name, value), ("x-litellm-api-key", LITELLM)))
    (sealed,) = out.get_all(H)
    assert list(KEYRING.open(sealed, NOW).entries) == [(name, token.encode())]
    assert name not in out


def test_o3_provider_auth_with_commas_passes_on_other() -> None:
    """AWS SigV4 is one credential whose parameters hold commas: the other policy leaves it alone."""
    sigv4 = "AWS4-HMAC-SHA256 Credential=AKIA/20261126/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=ab"
    headers = HeaderView.of(("authorization", sigv4), ("x-stainless-lang", "python"))
    decision, out = run("egress", "other", headers)
    assert decision.rejection is None and out.get_all("authorization") == (sigv4.encode(),)
    openai = HeaderView.of(("authorization", "Bearer sk-proj-openaikey1234"))
    decision, out = run("egress", "other", openai)
    assert decision.rejection is None and out.get_all("authorization") == (b"Bearer sk-proj-openaikey1234",)


SCRUBBED = [
    ("x-stainless-foo", LITELLM),
    ("x-stainless-helper", KEY),
    ("user-agent", f"my-agent/1.0 (key {OAUTH})"),
    ("user-agent", "tool sk-master-1234"),
    ("x-request-id", f"id-{LITELLM}"),
    ("traceparent", f"00-{KEY}"),
]


@pytest.mark.parametrize(("name", "value"), SCRUBBED)
def test_e7_allowlisted_headers_never_carry_a_second_credential(name: str, value: str) -> None:
    headers = HeaderView.of(("x-api-key", "placeholder"), (H, handoff(("x-api-key", KEY))), (name, value),
                            ("x-stainless-os", "Linux"))  # fmt: skip
    decision, out = run("egress", "anthropic", headers)
    assert decision.rejection is None
    assert name not in out and out.get_all("x-stainless-os") == (b"Linux",)
    assert out.get_all("x-api-key") == (KEY.encode(),)
    assert decision.audit.scrubbed == (name,) and name in decision.audit.removed
    assert value not in json.dumps(decision.audit.as_dict())


def test_e7_anthropic_beta_holding_a_secret_is_replaced_by_the_flag_alone() -> None:
    headers = HeaderView.of((H, handoff(("authorization", OAUTH))), ("anthropic-beta", f"a,{LITELLM}"))
    decision, out = run("egress", "anthropic", headers)
    assert out.get_all("anthropic-beta") == (b"oauth-2025-04-20",)
    assert decision.audit.scrubbed == ("anthropic-beta",)
    _, out = run("egress", "anthropic", HeaderView.of(("x-api-key", KEY), ("anthropic-beta", LITELLM)))
    assert "anthropic-beta" not in out


def test_e7_a_secret_in_the_url_is_refused_since_the_url_cannot_be_removed() -> None:
    for path in (f"/v1/messages?key={LITELLM}", f"/v1/messages?k={KEY}"):
        decision, _ = run("egress", "anthropic", HeaderView.of((":path", path), ("x-api-key", KEY)))
        assert decision.rejection is not None and decision.rejection.reason == "misplaced-path"
        assert "URL" in decision.rejection.message


def test_e7_secret_patterns_are_configurable() -> None:
    ctx = context(secret_patterns=(r"corp-[0-9]{6}",))
    headers = HeaderView.of(("x-api-key", KEY), ("x-stainless-a", "corp-123456"), ("x-stainless-b", LITELLM))
    decision, out = run("egress", "anthropic", headers, ctx)
    assert "x-stainless-a" not in out and out.get_all("x-stainless-b") == (LITELLM.encode(),)
    assert decision.audit.scrubbed == ("x-stainless-a",)


def test_e7_nothing_scrubbed_from_real_client_header_sets() -> None:
    """The patterns must not eat what real clients send (user agents, session ids, trace ids, stainless)."""
    from tests.support import fixtures

    for name in (fixtures.CLAUDE_CODE_API_KEY, fixtures.CLAUDE_CODE_OAUTH):
        recorded = fixtures.load(name)
        _, at_litellm = run("ingress", "", HeaderView.of(*recorded.headers))
        forwarded = [(n, v) for n, v in at_litellm if n != "x-litellm-api-key"]  # the key LiteLLM authenticated
        decision, _ = run("egress", "anthropic", HeaderView([*forwarded, ("x-api-key", b"placeholder")]))
        assert decision.rejection is None and decision.audit.scrubbed == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-stainless-helper", KEY), ("api-key", KEY), ("x-goog-api-key", OAUTH), ("cookie", f"k={KEY}"),
     (":path", f"/v1/messages?key={KEY}"), ("x-custom", f"Bearer {OAUTH}")],
)  # fmt: skip
def test_i6_an_anthropic_credential_anywhere_else_never_reaches_litellm(name: str, value: str) -> None:
    decision, _ = run("ingress", "", HeaderView.of(("x-litellm-api-key", LITELLM), (name, value)))
    assert decision.rejection is not None and decision.rejection.status == 400
    assert decision.rejection.reason == f"misplaced-{name.lstrip(':')}"
    assert KEY not in decision.rejection.message and OAUTH not in decision.rejection.message


def test_o3_anthropic_credential_inside_any_header_is_removed_on_other() -> None:
    headers = HeaderView.of(("x-note", f"see {KEY}"), ("x-ok", "1"), ("user-agent", "sk-master-1234 tool"))
    decision, out = run("egress", "other", headers)
    assert decision.audit.removed == ("x-note",)
    assert "x-note" not in out and out.get_all("x-ok") == (b"1",)
    # LiteLLM's key shape is an OpenAI key's shape too: on `other` only names and Anthropic's prefix decide.
    assert out.get_all("user-agent") == (b"sk-master-1234 tool",)


ROUTES = [
    # (method and path as sent, verdict: "carry" | "reroute:<path>" | "refuse"), decided on LiteLLM's own tables
    ("POST /v1/messages?beta=true", "carry"),
    ("POST /v1/chat/completions", "carry"),
    ("POST /chat/completions", "carry"),
    ("POST /anthropic/v1/messages", "carry"),
    ("POST /anthropic/v1/messages/count_tokens", "carry"),
    ("POST /anthropic/v1/skills", "carry"),
    ("GET /anthropic/v1/models", "carry"),
    ("POST /anthropic/v1/messages/batches", "carry"),
    # Starlette does not resolve dot segments: this is the pass-through with endpoint "../v1/skills".
    ("POST /anthropic/../v1/skills", "carry"),
    ("GET /v1/models", "carry"),
    ("GET /models", "carry"),
    ("GET /v1/models/claude-sonnet-4-5", "carry"),
    ("GET /models/claude-sonnet-4-5", "carry"),
    ("POST /v1/messages/count_tokens?beta=true", "reroute:/anthropic/v1/messages/count_tokens?beta=true"),
    ("POST /v1/messages/count_tokens", "reroute:/anthropic/v1/messages/count_tokens"),
    ("POST /v1/messages/%63ount_tokens", "reroute:/anthropic/v1/messages/count_tokens"),
    # Gemini-format routes call the model group (Anthropic here) without the client's headers.
    ("POST /models/claude-sonnet-4-5:generateContent", "refuse"),
    ("POST /models/claude-sonnet-4-5:streamGenerateContent?alt=sse", "refuse"),
    ("POST /models/claude-sonnet-4-5:countTokens", "refuse"),
    ("POST /v1beta/models/claude-sonnet-4-5:generateContent", "refuse"),
    ("POST /v1beta/models/claude-sonnet-4-5:streamGenerateContent", "refuse"),
    ("POST /v1beta/models/claude-sonnet-4-5:countTokens", "refuse"),
    ("POST /models/a/b:generateContent", "refuse"),
    ("POST /models/claude%3AgenerateContent", "refuse"),
    ("POST /v1/models/claude-sonnet-4-5", "refuse"),
    ("POST /v1/skills", "refuse"),
    ("GET /v1/skills/skill_1", "refuse"),
    ("POST /v1/%73kills", "refuse"),
    ("POST //v1//skills/", "refuse"),
    ("POST /v1/messages/../skills", "refuse"),
    ("POST /v1/messages/", "refuse"),
    ("POST //v1/messages", "refuse"),
    ("POST //v1/messages/count_tokens/", "refuse"),
    ("POST /anthropic/v1/files", "refuse"),
    ("GET /anthropic/v1/files", "refuse"),
    ("POST /anthropic%2Fv1%2Ffiles", "refuse"),
    ("GET /anthropic/v1/files/file_1/content", "refuse"),
    ("POST /anthropic/v1/batches/b1", "carry"),
    ("GET /anthropic/v1/batches/b1", "refuse"),
    ("GET /anthropic/v1/batches", "refuse"),
    ("POST /v1/files", "refuse"),
    ("POST /v1/batches", "refuse"),
    ("POST /v1/responses", "refuse"),
    ("POST /utils/token_counter", "refuse"),
    ("POST /v1/messages/batches", "refuse"),
    ("POST /V1/MESSAGES", "refuse"),
    ("POST /vertex_ai/v1/projects/p/locations/l/publishers/anthropic/models/c:rawPredict", "refuse"),
    ("POST ", "refuse"),
    (" /v1/messages", "refuse"),
]


@pytest.mark.parametrize(("request_line", "verdict"), ROUTES)
@pytest.mark.parametrize(("name", "value"), [("x-api-key", KEY), ("authorization", f"Bearer {OAUTH}")])
def test_i7_a_client_credential_only_goes_where_litellm_carries_it(
    request_line: str, verdict: str, name: str, value: str
) -> None:
    method, path = request_line.split(" ", 1)
    headers = HeaderView.of((":method", method), (":path", path), (name, value), ("x-litellm-api-key", LITELLM))
    decision, out = run("ingress", "", headers)
    if verdict == "refuse":
        assert decision.rejection is not None and decision.rejection.reason == "route-drops-credential"
        assert decision.rejection.status == 400 and route_path(path.encode()) in decision.rejection.message
        return
    assert decision.rejection is None and name not in out and H in out
    expected = verdict.removeprefix("reroute:") if verdict != "carry" else path
    assert out.get_all(":path") == (expected.encode(),)


def test_i7_refusal_names_the_pass_through_twin() -> None:
    decision, _ = run("ingress", "", HeaderView.of((":method", "POST"), (":path", "/v1/skills"), ("x-api-key", KEY)))
    assert decision.rejection is not None and "/anthropic/v1/skills" in decision.rejection.message


@pytest.mark.parametrize("path", ["/v1/skills", "/v1/files", "/anthropic/v1/files", "/utils/token_counter"])
def test_i7_without_a_client_credential_every_route_is_litellm_s_business(path: str) -> None:
    headers = HeaderView.of((":path", path), ("x-litellm-api-key", LITELLM), ("authorization", f"Bearer {LITELLM}"))
    decision, out = run("ingress", "", headers)
    assert decision.rejection is None and decision.set == () and list(out) == list(headers)


def test_s1_a_handoff_opens_at_most_max_opens_times() -> None:
    ctx = context(seal_max_opens=3)
    sealed = handoff(("x-api-key", KEY))
    other = handoff(("x-api-key", KEY))
    headers = HeaderView.of((H, sealed))
    outcomes = [run("egress", "anthropic", headers, ctx)[0] for _ in range(4)]
    assert [d.audit.source for d in outcomes[:3]] == ["sealed-x-api-key"] * 3
    replayed = outcomes[3].rejection
    assert replayed is not None and (replayed.status, replayed.reason) == (400, "seal-replayed")
    assert json.loads(replayed.body())["error"]["type"] == "invalid_request_error"
    # Another handoff of the same credential is its own count.
    assert run("egress", "anthropic", HeaderView.of((H, other)), ctx)[0].rejection is None


def test_s1_default_window_is_one_minute_and_three_opens() -> None:
    config = Config()
    assert (config.seal_ttl_seconds, config.seal_max_opens) == (60, 3)
    keyring = Keyring([KEY_A], config.seal_ttl_seconds)
    sealed = handoff(("x-api-key", KEY), keyring=keyring)
    on_time, _ = run("egress", "anthropic", HeaderView.of((H, sealed)), context(keyring=keyring), now=NOW + 60)
    assert on_time.rejection is None
    late, _ = run("egress", "anthropic", HeaderView.of((H, sealed)), context(keyring=keyring), now=NOW + 61)
    assert late.rejection is not None and late.rejection.reason == "seal-expired"


def test_s1_counter_forgets_expired_handoffs_and_never_a_live_one() -> None:
    counter = OpenCounter(max_opens=1, capacity=3)
    assert counter.admit(b"a", 10.0, 0.0) and not counter.admit(b"a", 10.0, 1.0)
    assert counter.admit(b"b", 20.0, 1.0) and counter.admit(b"c", 20.0, 1.0)
    # Full of live handoffs: a new one is refused, fail closed, and the live ones keep their counts.
    with pytest.raises(SealError) as full:
        counter.admit(b"d", 20.0, 2.0)
    assert full.value.reason == SealFailure.TRACKER_FULL
    assert not counter.admit(b"a", 10.0, 2.0) and not counter.admit(b"b", 20.0, 2.0) and len(counter) == 3
    assert counter.admit(b"a", 30.0, 11.0)  # the first "a" expired at 10 and was forgotten
    # Expired entries behind a live one (issue times differ by the clock skew) make room too.
    late = OpenCounter(max_opens=1, capacity=2)
    assert late.admit(b"x", 50.0, 0.0) and late.admit(b"y", 5.0, 0.0)
    assert late.admit(b"z", 50.0, 6.0) and len(late) == 2


def test_s1_a_handoff_opened_past_its_bound_stays_refused_whatever_else_is_opened() -> None:
    ctx = replace(context(seal_max_opens=3), opens=OpenCounter(3, capacity=50))
    victim = HeaderView.of((H, handoff(("x-api-key", KEY))))
    assert [run("egress", "anthropic", victim, ctx)[0].rejection for _ in range(3)] == [None] * 3
    outcomes = [run("egress", "anthropic", HeaderView.of((H, handoff(("x-api-key", KEY)))), ctx)[0] for _ in range(60)]
    assert [o.rejection is None for o in outcomes] == [True] * 49 + [False] * 11
    full = outcomes[-1].rejection
    assert full is not None and (full.status, full.reason) == (503, "seal-tracker-full")
    assert full.message == "The credential gateway is counting as many live handoffs as it can; retry shortly."
    assert json.loads(full.body())["error"]["type"] == "overloaded_error"
    replayed = run("egress", "anthropic", victim, ctx)[0].rejection
    assert replayed is not None and replayed.reason == "seal-replayed"


def test_s1_the_counter_holds_what_one_replica_can_open_in_a_handoff_s_life() -> None:
    assert tracker_capacity(60) == (60 + 30) * MAX_OPENS_PER_SECOND == 270_000
    assert context(seal_ttl_seconds=120).opens._capacity == tracker_capacity(120)


def test_s1_reload_keeps_the_count(tmp_path: Path) -> None:
    """A handoff opened before a secret file changed counts after it: the rebuilt context shares the counter."""
    credential = tmp_path / "server-credential"
    credential.write_text("sk-ant-api03-FIRST\n")
    live = LiveRules(Config(seal_max_opens=1, server_credential_file=credential), Metrics())
    first = live()
    credential.write_text("sk-ant-api03-SECOND-AFTER-ROTATION\n")
    live.reload_changed()
    assert live() is not first and live().server_credential == ApiKey(b"sk-ant-api03-SECOND-AFTER-ROTATION")
    assert live().opens is first.opens and live().routes is first.routes


def test_each_removed_header_is_named_once() -> None:
    ctx = context(egress_allowlist=("content-type",))
    headers = HeaderView.of(("x-api-key", KEY), ("anthropic-beta", f"a,{LITELLM}"), ("x-junk", "1"))
    decision, _ = run("egress", "anthropic", headers, ctx)
    assert sorted(decision.remove) == ["anthropic-beta", "x-junk"]


def test_i7_the_tables_are_the_supported_releases_and_every_classified_route_is_in_each() -> None:
    assert RELEASES == TESTED
    tables = Routes.shipped().tables
    assert [t.release for t in tables] == list(RELEASES)
    for table in tables:
        assert len(table.entries) > 500, table.release
        assert set(CLASSIFIED) <= table.templates(), (table.release, set(CLASSIFIED) - table.templates())
    assert {t for t, kind in CLASSIFIED.items() if kind == Route.REROUTE} == set(REROUTES)


MASTER = "sk-master-HIDDEN1234"
MK_MASTER = "mk-Master-NotSkShaped99"
TOKEN = b"egress-test-token-0123456789abcdefghij"

HIDDEN_KEYS = [
    # (id, headers LiteLLM sends to the egress besides its token, names that must not reach Anthropic)
    ("no separator before sk-", (("x-stainless-foo", f"X{MASTER}"),), {"x-stainless-foo"}),
    ("digits before sk-", (("user-agent", f"tool/1.0 9{MASTER}"),), {"user-agent"}),
    ("key in an allowlisted name", ((f"x-stainless-{MASTER.lower()}", "1"),), {f"x-stainless-{MASTER.lower()}"}),
    ("key in another name", ((f"x-{MASTER.lower()}", "1"),), {f"x-{MASTER.lower()}"}),
    ("anthropic key in a name", (("x-stainless-sk-ant-api03-abcdef", "1"),), {"x-stainless-sk-ant-api03-abcdef"}),
    # Dropped whole; the OAuth flag alone is written again.
    ("known master key in anthropic-beta", (("anthropic-beta", f"a-2025,{MK_MASTER}"),), set()),
    ("known master key mid-value", (("x-app", f"cli{MK_MASTER}x"),), {"x-app"}),
    ("known master key in a name, lower-cased", ((f"x-stainless-{MK_MASTER.lower()}", "1"),),
     {f"x-stainless-{MK_MASTER.lower()}"}),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "gone"), [c[1:] for c in HIDDEN_KEYS], ids=[c[0] for c in HIDDEN_KEYS])
def test_e7_litellm_keys_are_found_in_any_value_and_any_name(
    headers: tuple[tuple[str, str], ...], gone: set[str]
) -> None:
    ctx = replace(context(), egress_token=TOKEN, litellm_keys=(MK_MASTER.encode(),))
    sent = HeaderView.of(("x-api-key", TOKEN.decode()), ("authorization", f"Bearer {OAUTH}"), *headers)
    decision, out = run("egress", "anthropic", sent, ctx)
    assert decision.rejection is None and decision.audit.source == "request-authorization"
    assert not gone & set(out.names())
    assert out.get_all("authorization") == (f"Bearer {OAUTH}".encode(),)
    logged = json.dumps(decision.audit.as_dict())
    assert MASTER.lower() not in logged.lower() and MK_MASTER.lower() not in logged.lower()
    assert "sk-ant-api03-abcdef" not in logged
    for name, value in out:
        assert not ctx.holds_secret(value) or name == "authorization", name
        assert MK_MASTER.lower().encode() not in value.lower() and MK_MASTER.lower() not in name


@pytest.mark.parametrize(
    "path",
    ["/v1/messages?key=sk%2Dant%2Dapi03-HIDDEN", "/v1/messages?key=%73k-ant-api03-HIDDEN",
     "/v1/messages?key=sk%252Dant%252Dapi03-HIDDEN", "/v1/messages/sk-ant-api03-HIDDEN"],
)  # fmt: skip
def test_i6_e7_an_anthropic_key_in_the_url_is_found_decoded_too(path: str) -> None:
    ingress, _ = run("ingress", "", HeaderView.of((":method", "POST"), (":path", path)))
    assert ingress.rejection is not None and ingress.rejection.reason == "misplaced-path"
    egress, _ = run("egress", "anthropic", HeaderView.of((":path", path)))
    assert egress.rejection is not None and egress.rejection.reason == "misplaced-path"
    other, _ = run("egress", "other", HeaderView.of((":path", path)))
    assert other.rejection is None or other.rejection.reason == "misplaced-path"


def test_i6_an_anthropic_key_in_a_header_name_is_refused_without_repeating_it() -> None:
    decision, _ = run("ingress", "", HeaderView.of(("x-sk-ant-api03-hiddenkey", "1"), ("x-api-key", KEY)))
    assert decision.rejection is not None
    assert (decision.rejection.status, decision.rejection.reason) == (400, "misplaced-header-name")
    assert decision.rejection.metric_label == "misplaced-header"
    assert "hiddenkey" not in decision.rejection.message + json.dumps(decision.audit.as_dict())


def test_o1_policy_other_strips_the_egress_token_and_anthropic_keys_in_names() -> None:
    ctx = replace(context(), egress_token=TOKEN)
    headers = HeaderView.of(
        ("authorization", "Bearer sk-openai-PROVIDERKEY"), ("x-api-key", TOKEN.decode()),
        ("x-note", f"t={TOKEN.decode()}"), ("x-sk-ant-api03-named", "1"), ("x-ok", "1"),
    )  # fmt: skip
    decision, out = run("egress", "other", headers, ctx)
    assert decision.rejection is None
    assert sorted(out.names()) == ["authorization", "x-ok"]
    assert "named" not in json.dumps(decision.audit.as_dict())


def test_i7_a_release_table_loads_as_written() -> None:
    table = Table.load("1.108.7")
    raw = json.loads((Path(__file__).parents[1] / "ext_proc" / "data" / "litellm-routes-1.108.7.json").read_text())
    assert table.release == "1.108.7" and len(table.entries) == len(raw["routes"])
    for entry, route in zip(table.entries, raw["routes"], strict=True):
        assert entry.template == route["path"] and entry.regex.pattern == route["regex"]
        assert entry.methods == (frozenset(route["methods"]) if route["methods"] else None)
    assert any(e.methods is None for e in table.entries), "mounts match any method"
    assert table.handler("POST", "/v1/messages") == "/v1/messages"
    assert table.handler("GET", "/v1/messages") is None, "a path match with another method is no handler"
    assert table.handler("POST", "/models/c:generateContent") == "/models/{model_name:path}:generateContent"


def test_i6_e7_a_percent_escaped_key_in_a_header_is_a_key() -> None:
    escaped = "sk%2Dant%2Dapi03-HIDDEN"
    ingress, _ = run("ingress", "", HeaderView.of(("x-note", escaped), ("x-api-key", KEY)))
    assert ingress.rejection is not None and ingress.rejection.reason == "misplaced-x-note"
    egress, out = run("egress", "anthropic", HeaderView.of(("x-stainless-a", "sk%252Dmaster-HIDDEN1"), ("x-app", "1")))
    assert egress.rejection is None and list(out.names()) == ["x-app"]


def test_e7_every_kept_header_is_searched_after_one_whose_name_holds_a_key() -> None:
    headers = HeaderView.of(("x-stainless-sk-master-named1", "1"), ("x-app", f"see {MASTER}"), ("x-stainless-b", "1"))
    decision, out = run("egress", "anthropic", headers)
    assert decision.audit.scrubbed[1:] == ("x-app",) and list(out.names()) == ["x-stainless-b"]


def test_e7_the_litellm_keys_a_context_is_built_with_are_searched() -> None:
    ctx = rule_context(Config(), Secrets(keyring=KEYRING, egress_token=TOKEN, litellm_keys=(MK_MASTER.encode(),)))
    assert ctx.litellm_keys == (MK_MASTER.encode(),) and ctx.holds_secret(f"a{MK_MASTER}b".encode())


def test_s1_a_full_counter_sweeps_what_expired_behind_a_live_head_at_most_once_a_second() -> None:
    counter = OpenCounter(max_opens=1, capacity=2)
    assert counter.admit(b"head", 100.0, 0.0) and counter.admit(b"behind", 2.2, 0.0)
    with pytest.raises(SealError):
        counter.admit(b"new", 100.0, 2.0)  # swept at 2: "behind" is still live
    with pytest.raises(SealError):
        counter.admit(b"new", 100.0, 2.5)  # "behind" has expired, but the last sweep was within the second
    assert counter.admit(b"new", 100.0, 3.0)  # swept at 3
    # A handoff lives through its last second.
    edge = OpenCounter(max_opens=1, capacity=2)
    assert edge.admit(b"head", 100.0, 0.0) and edge.admit(b"behind", 3.0, 0.0)
    with pytest.raises(SealError):
        edge.admit(b"new", 100.0, 3.0)


def test_i7_verdicts_are_remembered_per_request_and_mixed_local_and_carrying_releases_carry() -> None:
    routes = Routes.shipped()
    assert routes.for_client_credential(b"POST", b"/v1/messages").refusal is None
    assert routes.for_client_credential(b"POST", b"/v1/skills").refusal is not None
    assert routes.for_client_credential(b"POST", b"/v1/messages").refusal is None
    # One release carries the path, another answers it locally: the handoff goes nowhere else, so it carries.
    carries = Table("a", (Entry(None, "/v1/messages", re.compile("^/x$")),))
    local = Table("b", (Entry(None, "/v1/models", re.compile("^/x$")),))
    assert Routes((carries, local)).for_client_credential(b"GET", b"/x") == CARRIES


@pytest.mark.parametrize(("length", "shown"), [(199, True), (200, True), (201, False)])
def test_i7_a_refusal_shows_a_path_of_up_to_200_printable_characters_as_it_is(length: int, shown: bool) -> None:
    path = "/" + "a" * (length - 1)
    refusal = Routes.shipped().for_client_credential(b"POST", path.encode()).refusal
    assert refusal is not None
    assert (f"POST {path};" in refusal) == shown
    assert shown or f"POST {path[:200]!r};" in refusal


def test_a_repeated_path_or_method_carries_no_client_credential() -> None:
    """Envoy sends one :method and one :path; a peer that sends two gets the route refusal, not a route made of
    their concatenation."""
    for doubled in ((":path", "/v1/"), (":path", "messages"), (":method", "PO"), (":method", "ST")):
        first = (":path", "/v1/") if doubled[0] == ":path" else (":method", "PO")
        headers = HeaderView.of(first, doubled, ("x-api-key", "sk-ant-api03-TWOPATHS"), ("x-litellm-api-key", LITELLM))
        decision, _ = run("ingress", "", headers)
        assert decision.rejection is not None and decision.rejection.reason == "route-drops-credential", doubled


def test_a_header_name_outside_latin_1_is_read_not_crashed_on() -> None:
    """gRPC names are text: one Envoy would never send still gets a decision (its bytes with '?' for the rest)."""
    headers = HeaderView([("x-\u20ac-sk-ant-api03-NAME", b"v"), ("x-api-key", KEY.encode())])
    decision, out = run("egress", "anthropic", headers)
    assert decision.rejection is None and out.get_all("x-api-key") == (KEY.encode(),)
    assert "x-\u20ac-sk-ant-api03-name" in decision.remove
    assert name_bytes("x-\u20ac") == b"x-?"


def test_in_a_seal_only_an_anthropic_credential_under_its_own_header_counts() -> None:
    """Our ingress seals one credential per header; a seal made otherwise (by a holder of the key) is read by the
    same rule: an entry with no Anthropic credential does not hide a later one, an entry under another name is
    never sent."""
    sealed = handoff(("x-api-key", "none"), ("x-api-key", "sk-ant-api03-SECOND"), ("x-other", "sk-ant-api03-OTHER"))
    decision, out = run("egress", "anthropic", HeaderView.of((H, sealed)))
    assert decision.rejection is None and out.get_all("x-api-key") == (b"sk-ant-api03-SECOND",)
    assert b"sk-ant-api03-OTHER" not in b"".join(v for _, v in out)
