"""Properties over random header sets: what must hold for every request, not just the listed ones."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.credentials import ApiKey, Credential, OAuthToken, Prefixes, token_of
from ext_proc.headers import HeaderView
from ext_proc.rules import NEVER_TOUCHED
from tests.support.rules import KEYRING, NOW, context, handoff, run

H = "x-credential-handoff"
FLAG = b"oauth-2025-04-20"
PREFIXES = Prefixes()
LITELLM = ("x-litellm-api-key", "api-key", "x-goog-api-key", "ocp-apim-subscription-key")
NAMES = (
    "x-api-key", "authorization", "anthropic-beta", "cookie", H, *LITELLM, "content-type", "x-stainless-os",
    "user-agent", "x-custom", "host", ":path", "content-length", "traceparent", "X-Api-Key", "AUTHORIZATION",
    "x-stainless-foo", "x-request-id",
)  # fmt: skip
tokens = st.sampled_from(
    [b"sk-ant-api03-A", b"sk-ant-oat01-B", b"sk-ant-", b"sk-master-1234", b"sk-litellm-1", b"None", b"null", b"",
     b"undefined", b"placeholder", b"sk-ant-api03-\xff"]
) | st.binary(max_size=12)  # fmt: skip
values = st.one_of(
    tokens,
    tokens.map(lambda t: b"Bearer " + t),
    tokens.map(lambda t: b" bEARER  " + t + b" "),
    st.sampled_from([b"Basic abc", b"oauth-2025-04-20", b"a,oauth-2025-04-20", b"x,y"]),
    # What Envoy makes of repeated headers (comma-joined) and HTTP/1 obs-fold (joined with a space).
    st.tuples(tokens, tokens).map(lambda ts: ts[0] + b", " + ts[1]),
    st.tuples(tokens, tokens).map(lambda ts: b"Bearer " + ts[0] + b",Bearer " + ts[1]),
    st.tuples(tokens, tokens).map(lambda ts: ts[0] + b" " + ts[1]),
)
# Anything that reads as an Anthropic credential or a LiteLLM key (the tokens above that are neither cannot match).
SECRET = re.compile(rb"sk-ant-|sk-master|sk-litellm")
header_sets = st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=12)
server_credentials = st.sampled_from([None, ApiKey(b"sk-ant-api03-SRV"), OAuthToken(b"sk-ant-oat01-SRV")])
sealed_sets = st.lists(st.tuples(st.sampled_from(["x-api-key", "authorization"]), tokens), max_size=2)


def _is_anthropic(name: str, value: bytes) -> bool:
    token = token_of(name, value)
    return token is not None and PREFIXES.classify(token) is not None


@settings(max_examples=600)
@given(header_sets, server_credentials, st.none() | sealed_sets)
def test_egress_invariants(pairs: list[tuple[str, bytes]], server: Credential | None, sealed: object) -> None:
    if sealed is not None:
        pairs = [*pairs, (H, handoff(*sealed).encode())]  # type: ignore[misc]
    headers = HeaderView(pairs)
    decision, out = run("egress", "anthropic", headers, context(server))
    if decision.rejection is not None:
        assert decision.rejection.status == 400 and decision.set == () and decision.remove == ()
        return
    names = [n for n, _ in out]
    assert not {H, "cookie", *LITELLM} & set(names)
    credentials = [(n, v) for n, v in out if n in ("x-api-key", "authorization")]
    assert len(credentials) <= 1
    # E6/E7: no header but the one chosen credential carries an Anthropic credential or a LiteLLM key.
    carriers = [n for n, v in out if SECRET.search(v) and n not in ("host", "content-length", "transfer-encoding")]
    assert carriers == [n for n, _ in credentials if _is_anthropic(n, dict(out)[n])]
    for name, value in credentials:
        assert _is_anthropic(name, value)
        assert value.lower() not in (b"none", b"null", b"undefined", b"")
        assert name == "x-api-key" or value.startswith(b"Bearer ")
    is_oauth = bool(credentials) and credentials[0][0] == "authorization"
    assert is_oauth == (decision.audit.kind == "oauth")
    flags = [f.strip() for v in out.get_all("anthropic-beta") for f in v.split(b",")]
    assert (FLAG in flags) == is_oauth
    ctx = context(server)
    written_by_rules = {"x-api-key", "authorization", "anthropic-beta"}
    assert all(n.startswith(":") or n in NEVER_TOUCHED or n in written_by_rules or ctx.allowed(n) for n in names)
    if credentials == [] and server is not None:
        raise AssertionError("a configured server credential must be used when nothing better exists")


@settings(max_examples=400)
@given(header_sets)
def test_ingress_invariants(pairs: list[tuple[str, bytes]]) -> None:
    decision, out = run("ingress", "", HeaderView(pairs))
    if decision.rejection is not None:
        assert decision.rejection.status == 400
        return
    for name in ("x-api-key", "authorization"):
        assert not any(_is_anthropic(name, v) for v in out.get_all(name))
    handoffs = out.get_all(H)
    assert len(handoffs) <= 1
    if handoffs:
        for origin, token in KEYRING.open(handoffs[0], NOW).entries:
            assert any(
                _is_anthropic(origin, v) and token_of(origin, v) == token for v in HeaderView(pairs).get_all(origin)
            )


@settings(max_examples=300)
@given(header_sets)
def test_other_policy_never_lets_anthropic_credential_through(pairs: list[tuple[str, bytes]]) -> None:
    decision, out = run("egress", "other", HeaderView(pairs))
    if decision.rejection is not None:
        assert decision.rejection.status == 400 and decision.set == () and decision.remove == ()
        return
    for name, value in out:
        if name.startswith(":") or name in NEVER_TOUCHED:
            assert name in NEVER_TOUCHED or b"sk-ant-" not in value  # Envoy rewrites host, checks framing
            continue
        assert name not in (H, *LITELLM)
        assert b"sk-ant-" not in value


@settings(max_examples=300)
@given(header_sets, server_credentials)
def test_client_credential_wins_end_to_end(pairs: list[tuple[str, bytes]], server: Credential | None) -> None:
    """Ingress then egress: the client's own Anthropic credential is the one that reaches Anthropic."""
    client = HeaderView(pairs)
    first, at_litellm = run("ingress", "", client)
    if first.rejection is not None:
        return
    # LiteLLM replaces x-api-key with its own server key and forwards the rest (as pass-through routes do).
    forwarded = [(n, v) for n, v in at_litellm if n != "x-api-key"]
    decision, out = run("egress", "anthropic", HeaderView([*forwarded, ("x-api-key", b"sk-ant-api03-LLSERVER")]),
                        context(server))  # fmt: skip
    if decision.rejection is not None:
        # A LiteLLM key in the URL cannot be removed, so it is refused; nothing else may stop the request.
        assert decision.rejection.reason == "misplaced-path"
        return
    if first.audit.sealed:
        assert decision.audit.source in ("sealed-x-api-key", "sealed-authorization")
    else:
        assert decision.audit.source == "request-x-api-key"
        assert out.get_all("x-api-key") == (b"sk-ant-api03-LLSERVER",)
