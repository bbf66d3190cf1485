"""Properties over random header sets: what must hold for every request, not just the listed ones.

The generators spend most examples where the decisions are: valid and nearly valid credentials (Anthropic's
alphabet, a changed prefix, a byte outside it, a second token joined on), LiteLLM keys beside them (without one the
ingress refuses, I8), handoffs sealed by this or another key, expired or tampered, and LiteLLM's route paths.
Each test counts the examples that reached the seal and the credential choice, asserts it is at least half, and
reports the share at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.credentials import ApiKey, Credential, OAuthToken, Prefixes, token_of
from ext_proc.headers import HeaderView
from ext_proc.rules import NEVER_TOUCHED
from ext_proc.seal import Keyring
from tests.support.decisions import KEY_B, KEYRING, NOW, context, handoff, run

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
noise = st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=4)
server_credentials = st.sampled_from([None, ApiKey(b"sk-ant-api03-SRV"), OAuthToken(b"sk-ant-oat01-SRV")])

# Valid credentials, and the near misses that must be read the same way or refused.
body = st.text(string.ascii_letters + string.digits + "-_", min_size=6, max_size=24).map(str.encode)
api_keys = body.map(lambda b: b"sk-ant-api03-" + b)
oauth_tokens = body.map(lambda b: b"sk-ant-oat01-" + b)
anthropic = api_keys | oauth_tokens
near_misses = st.one_of(
    anthropic.map(lambda t: t + b" "), anthropic.map(lambda t: t.upper()), anthropic.map(lambda t: t + b"\xff"),
    anthropic.map(lambda t: t + b"," + t), st.tuples(api_keys, oauth_tokens).map(lambda ts: ts[0] + b", " + ts[1]),
    anthropic.map(lambda t: t.replace(b"sk-ant-", b"sk-ant_")), st.sampled_from([b"sk-ant-", b"None", b""]),
)  # fmt: skip
litellm_keys = st.sampled_from([b"sk-master-1234", b"sk-litellm-1"]) | body.map(lambda b: b"sk-" + b)


def _credential(name: str, token: bytes, bearer_style: bytes = b"Bearer ") -> tuple[str, bytes]:
    return (name, token) if name == "x-api-key" else (name, bearer_style + token)


def _weighted(often: st.SearchStrategy[Any], times: int, rarely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``often`` about ``times`` as often as ``rarely`` (one_of with repeats does not weigh: Hypothesis merges them;
    and it favours small integers, so the rare branch is the largest)."""
    return st.integers(0, times).flatmap(lambda i: rarely if i == times else often)


valid_pairs = st.one_of(
    api_keys.map(lambda t: _credential("x-api-key", t)),
    oauth_tokens.map(lambda t: _credential("authorization", t)),
    st.tuples(st.sampled_from(["x-api-key", "authorization"]), anthropic, st.sampled_from([b"Bearer ", b"bearer  "]))
    .map(lambda c: _credential(*c)),
)  # fmt: skip
near_pairs = st.tuples(st.sampled_from(["x-api-key", "authorization"]), near_misses).map(lambda c: _credential(*c))
# One credential or a key and a token together; a near miss in about one example of eight.
credential_sets = _weighted(
    st.one_of(valid_pairs.map(lambda c: [c]), st.tuples(api_keys, oauth_tokens).map(
        lambda ts: [_credential("x-api-key", ts[0]), _credential("authorization", ts[1])])),
    7, near_pairs.map(lambda c: [c]),
)  # fmt: skip
# Usually a LiteLLM key beside them; without one (one example in eight) the ingress refuses a client's own (I8).
litellm_pairs = _weighted(litellm_keys.map(lambda k: ("x-litellm-api-key", k)), 7, st.none())
benign = st.lists(
    st.tuples(st.sampled_from(["content-type", "user-agent", "x-stainless-os", "anthropic-version", "x-custom"]),
              st.sampled_from([b"application/json", b"claude-cli/2.1.197", b"Linux", b"2023-06-01", b"1"])),
    max_size=3,
)  # fmt: skip
paths = st.sampled_from([
    b"/v1/messages", b"/v1/messages", b"/v1/messages?beta=true", b"/anthropic/v1/messages", b"/v1/messages",
    b"/v1/messages/count_tokens", b"/v1/chat/completions", b"/anthropic/v1/models", b"//v1/messages",
    b"/V1/Messages", b"/v1/messages?key=sk-master-1234",
])  # fmt: skip


def _request(
    parts: tuple[list[tuple[str, bytes]], tuple[str, bytes] | None, list[tuple[str, bytes]], bytes],
) -> list[tuple[str, bytes]]:
    credentials, litellm, extra, path = parts
    return [(":method", b"POST"), (":path", path), *credentials, *([litellm] if litellm else []), *extra]


# What a client sends: its credentials, usually a LiteLLM key, a few ordinary headers, one of LiteLLM's routes; a
# sixth of the examples are the raw header sets above (repeats, odd spellings, credentials in any header).
client_requests = st.tuples(credential_sets, litellm_pairs, _weighted(benign, 3, noise), paths).map(_request)
header_sets = _weighted(client_requests, 5, st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=12))
OTHER_KEYRING = Keyring([KEY_B], 600)
sealed_entries = st.lists(st.one_of(api_keys.map(lambda t: ("x-api-key", t)),
                                    oauth_tokens.map(lambda t: ("authorization", t)),
                                    st.tuples(st.sampled_from(["x-api-key", "authorization"]), tokens)),
                          min_size=1, max_size=2)  # fmt: skip


def _handoff(entries: list[tuple[str, bytes]], how: str) -> str:
    """A handoff as this ingress writes it, or as it must not be taken: another key's, expired, tampered."""
    if how == "other-key":
        return OTHER_KEYRING.seal(entries, NOW)
    if how == "expired":
        return handoff(*entries, now=NOW - 601)
    text = handoff(*entries)
    return text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1] if how == "tampered" else text


# Mostly as this ingress writes them; one in eight sealed by another key, expired or tampered with.
how = _weighted(st.just("valid"), 7, st.sampled_from(["other-key", "expired", "tampered"]))
handoffs = st.tuples(sealed_entries, how).map(lambda e: _handoff(*e))

# Examples that reached the seal and the credential choice, by test: (reached, examples).
SHARES: dict[str, Counter[str]] = {}


def counted(name: str) -> Callable[[bool], None]:
    counts = SHARES.setdefault(name, Counter())

    def count(reached: bool) -> None:
        counts["examples"] += 1
        counts["reached"] += reached

    return count


def assert_most_reached(name: str) -> None:
    counts = SHARES[name]
    assert counts["reached"] * 2 >= counts["examples"], f"{name}: {counts['reached']} of {counts['examples']}"


def _is_anthropic(name: str, value: bytes) -> bool:
    token = token_of(name, value)
    return token is not None and PREFIXES.classify(token) is not None


def test_egress_invariants() -> None:
    egress_invariants()
    assert_most_reached("egress: a handoff opened and its credential sent")


@settings(max_examples=600)
@given(header_sets, server_credentials, _weighted(handoffs, 7, st.none()))
def egress_invariants(pairs: list[tuple[str, bytes]], server: Credential | None, sealed: str | None) -> None:
    if sealed is not None:
        pairs = [*pairs, (H, sealed.encode())]
    headers = HeaderView(pairs)
    decision, out = run("egress", "anthropic", headers, context(server))
    source = decision.audit.source
    counted("egress: a handoff opened and its credential sent")(
        source is not None and source.value.startswith("sealed")
    )
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


def test_ingress_invariants() -> None:
    ingress_invariants()
    assert_most_reached("ingress: a client credential sealed")


@settings(max_examples=400)
@given(header_sets)
def ingress_invariants(pairs: list[tuple[str, bytes]]) -> None:
    decision, out = run("ingress", "", HeaderView(pairs))
    counted("ingress: a client credential sealed")(decision.rejection is None and bool(decision.audit.sealed))
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


def test_client_credential_wins_end_to_end() -> None:
    """Ingress then egress: the client's own Anthropic credential is the one that reaches Anthropic."""
    client_credential_wins_end_to_end()
    assert_most_reached("end to end: sealed at the ingress, sent from the seal")


@settings(max_examples=300)
@given(header_sets, server_credentials)
def client_credential_wins_end_to_end(pairs: list[tuple[str, bytes]], server: Credential | None) -> None:
    client = HeaderView(pairs)
    first, at_litellm = run("ingress", "", client)
    count = counted("end to end: sealed at the ingress, sent from the seal")
    if first.rejection is not None:
        count(False)
        return
    # LiteLLM replaces x-api-key with its own server key and forwards the rest (as pass-through routes do).
    forwarded = [(n, v) for n, v in at_litellm if n != "x-api-key"]
    decision, out = run("egress", "anthropic", HeaderView([*forwarded, ("x-api-key", b"sk-ant-api03-LLSERVER")]),
                        context(server))  # fmt: skip
    source = decision.audit.source
    count(bool(first.audit.sealed) and source is not None and source.value.startswith("sealed"))
    if decision.rejection is not None:
        # A LiteLLM key in the URL cannot be removed, so it is refused; nothing else may stop the request.
        assert decision.rejection.reason == "misplaced-path"
        return
    if first.audit.sealed:
        assert decision.audit.source in ("sealed-x-api-key", "sealed-authorization")
    else:
        assert decision.audit.source == "request-x-api-key"
        assert out.get_all("x-api-key") == (b"sk-ant-api03-LLSERVER",)
