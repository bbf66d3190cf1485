"""The credential rules: headers in, decision out. Pure: no gRPC, no I/O, no clock of its own.

``decide`` is the whole policy for a request. The transport turns Envoy's message into a ``HeaderView``, calls
``decide`` and turns the ``Decision`` back into a header mutation or an immediate response. ``answer`` is the one
rule for the upstream's answer to a request sent on a client's own credential (E9).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_to_bytes

from ext_proc.credentials import (
    AUTHORIZATION,
    CREDENTIAL_HEADERS,
    NULLISH,
    X_API_KEY,
    Credential,
    Prefixes,
    Problem,
    UnreadableCredential,
)
from ext_proc.headers import HeaderView
from ext_proc.names import POLICIES, Leg, Policy
from ext_proc.routes import Routes
from ext_proc.seal import Keyring, OpenCounter, SealError, SealFailure

ANTHROPIC_BETA = "anthropic-beta"
COOKIE = "cookie"
REQUEST_ID = "x-request-id"
PATH = ":path"
METHOD = ":method"
# Envoy owns these; a filter that touches them breaks framing or routing.
NEVER_TOUCHED = frozenset({"host", "content-length", "transfer-encoding"})
_BEARER_SCHEME = re.compile(rb"(?i)^bearer(?=[ \t]|$)")
_VERDICT_CACHE_SIZE = 4096
_MEMO_VALUE_BYTES = 256


class Source(StrEnum):
    """Where the credential that left came from, in priority order."""

    SEALED_X_API_KEY = "sealed-x-api-key"
    SEALED_AUTHORIZATION = "sealed-authorization"
    REQUEST_X_API_KEY = "request-x-api-key"
    REQUEST_AUTHORIZATION = "request-authorization"
    SERVER = "server"
    NONE = "none"

    @property
    def is_clients(self) -> bool:
        """Whether the credential is one a client brought (its own key or token), not the operator's."""
        return self not in (Source.SERVER, Source.NONE)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An answer given in Anthropic's error shape instead of forwarding the request."""

    status: int
    error_type: str
    message: str
    reason: str
    # The metric label when ``reason`` names something the client chose (a header name): labels stay a closed set.
    label: str = field(default="", compare=False)

    @property
    def metric_label(self) -> str:
        return self.label or self.reason

    def body(self) -> bytes:
        return json.dumps(
            {"type": "error", "error": {"type": self.error_type, "message": self.message}},
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True, slots=True)
class Audit:
    """What was decided, safe to log: names, kinds and fingerprints, never a value."""

    leg: str
    policy: str
    outcome: str
    request_id: str | None
    source: Source | None = None
    kind: str | None = None
    fingerprint: str | None = None
    sealed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reason: str | None = None
    # Kept headers removed because their value held a credential (an Anthropic one, or a LiteLLM key's shape).
    scrubbed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "leg": self.leg,
            "policy": self.policy,
            "outcome": self.outcome,
            "reason": self.reason,
            "source": self.source.value if self.source else None,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "sealed": list(self.sealed),
            "removed": list(self.removed),
            "scrubbed": list(self.scrubbed),
            "request_id": self.request_id,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    remove: tuple[str, ...]
    set: tuple[tuple[str, bytes], ...]
    audit: Audit
    rejection: Rejection | None = None

    @property
    def on_clients_credential(self) -> bool:
        """Whether the request goes out on a client's own credential: its answer is then the client's (E9)."""
        source = self.audit.source  # a rejection's audit names none
        return source is not None and source.is_clients

    def apply(self, headers: HeaderView) -> HeaderView:
        """The headers Envoy forwards after this decision (a set replaces every value of its name)."""
        drop = set(self.remove) | {name for name, _ in self.set}
        return HeaderView([*((n, v) for n, v in headers if n not in drop), *self.set])


@dataclass(frozen=True, slots=True, eq=False)
class RuleContext:
    """Everything ``decide`` needs besides the request, compiled once from the config. Compared by identity (a
    reload builds a new one); its repr shows no secret (the LiteLLM keys, the egress token and the memos hold
    credentials)."""

    keyring: Keyring
    server_credential: Credential | None
    handoff_header: str
    litellm_headers: frozenset[str]
    allow_exact: frozenset[str]
    allow_prefixes: tuple[str, ...]
    prefixes: Prefixes
    oauth_beta: bytes
    # Anthropic's prefix or a LiteLLM key's shape: never let out in a header the egress keeps.
    secret_pattern: re.Pattern[bytes]
    # What LiteLLM sends as its Anthropic key; None when no proof of the sender is asked for (E0).
    egress_token: bytes | None = field(repr=False)
    # The one piece of state the rules are handed: how often each handoff was opened (shared across reloads).
    opens: OpenCounter
    # LiteLLM keys known by value (its master key when it is not of the sk- shape): never let out on the egress.
    litellm_keys: tuple[bytes, ...] = field(repr=False)
    # Whether LiteLLM authenticates its callers: a client's own credential then needs a LiteLLM key beside it (I8).
    litellm_requires_key: bool
    # LiteLLM's route tables: where a client's own credential is carried (I7). Loaded once, shared by reloads.
    routes: Routes = field(default_factory=Routes.shipped)
    # A memo of strips_on_egress (a pure function of the fields above), never part of the context's value; each
    # context, including one rebuilt by a reload, starts its own.
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False)
    # The same for holds_secret, on short values only (a client's user agent and x-stainless-* repeat).
    _secret_verdicts: dict[bytes, bool] = field(default_factory=dict, init=False, repr=False)

    def allowed(self, name: str) -> bool:
        return name in self.allow_exact or name.startswith(self.allow_prefixes)

    def holds_secret(self, value: bytes) -> bool:
        """Whether a header value holds Anthropic's prefix or a LiteLLM key's shape (rule E7)."""
        verdict = self._secret_verdicts.get(value)
        if verdict is None:
            verdict = self.secret_pattern.search(value) is not None or any(k in value for k in self.litellm_keys)
            if len(value) <= _MEMO_VALUE_BYTES:
                if len(self._secret_verdicts) >= _VERDICT_CACHE_SIZE:
                    self._secret_verdicts.clear()
                self._secret_verdicts[value] = verdict
        return verdict

    def name_holds_secret(self, name: str) -> bool:
        """Whether a header name holds a credential: Envoy lower-cases names, so a lower-case key survives there."""
        raw = name_bytes(name)
        return self.holds_secret(raw) or any(k.lower() in raw for k in self.litellm_keys)

    def strips_on_egress(self, name: str) -> bool:
        """Whether the egress leg removes this header whatever its value (anthropic-beta is decided apart)."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = (
                not name.startswith(":")
                and name not in NEVER_TOUCHED
                and (
                    name in CREDENTIAL_HEADERS
                    or name == self.handoff_header
                    or name == COOKIE
                    or name in self.litellm_headers
                    or not self.allowed(name)
                )
            )
            # Bounded: a client sending random header names cannot grow it without limit.
            if len(self._verdicts) < _VERDICT_CACHE_SIZE:
                self._verdicts[name] = verdict
        return verdict


def name_bytes(name: str) -> bytes:
    """A header name as bytes, to search it like a value (Envoy's names are ASCII tokens, so nothing is replaced)."""
    return name.encode("latin-1", "replace")


_LOGGABLE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def loggable_id(raw: bytes) -> str:
    """A request id as the audit log may print it: an id's characters and length, else a digest of it.

    The id is client text: it must not forge log lines, flood them, or carry a credential into them. A digest
    keeps the ingress and egress lines of one request joined (and sampled alike) without printing the text.
    """
    if _LOGGABLE_ID.fullmatch(raw) and not raw.startswith(b"sk-") and b"-sk-" not in raw:
        return raw.decode("ascii")
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


class _Reject(Exception):
    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection


def decide(leg: str, policy: str, headers: HeaderView, ctx: RuleContext, now: float) -> Decision:
    """The whole policy for one request's headers. Never raises: bad input becomes a rejection."""
    request_ids = headers.get_all(REQUEST_ID)
    base = Audit(leg, policy, "forward", loggable_id(request_ids[0]) if request_ids else None)
    try:
        if leg == Leg.INGRESS:
            if policy and policy not in POLICIES:
                raise _Reject(_misconfigured(f"unknown policy {policy!r}", "config-policy"))
            return _ingress(headers, ctx, now, base)
        if leg == Leg.EGRESS:
            if policy == Policy.ANTHROPIC:
                return _egress_anthropic(headers, ctx, now, base)
            if policy == Policy.OTHER:
                return _egress_other(headers, ctx, base)
            raise _Reject(_misconfigured(f"unknown policy {policy!r}", "config-policy"))
        raise _Reject(_misconfigured(f"unknown leg {leg!r}", "config-leg"))
    except _Reject as rejected:
        r = rejected.rejection
        return Decision((), (), replace(base, outcome="reject", reason=r.reason), r)


RETRY_AFTER = "retry-after"
RETRY_AFTER_MS = "retry-after-ms"
_STATUS = ":status"
# Whole seconds Anthropic may ask a client to wait, as digits; longer is not a wait anyone honours.
_WAIT_DIGITS = 9


def answer(headers: HeaderView) -> tuple[tuple[str, bytes], ...]:
    """E9: the headers to set on the upstream's answer to a request sent on a client's own credential.

    A 4xx answer there is about that client's request or credential (a revoked token, an account over its rate
    limit), not about the deployment every client shares; LiteLLM's router cools a deployment down for everyone
    on 401, 402, 404, 408 and 429 unless the answer says ``retry-after: 0`` (it takes the cooldown's length from
    that header, and does not cool down for 0). Anthropic's wait, when it gave one in seconds, moves to
    ``retry-after-ms``, which Anthropic's SDKs read first and LiteLLM does not read at all. 5xx answers are
    Anthropic's trouble, the deployment's: left as they are.
    """
    status = headers.get_all(_STATUS)
    if len(status) != 1 or len(status[0]) != 3 or status[0][:1] != b"4" or not status[0].isdigit():
        return ()
    sets: list[tuple[str, bytes]] = [(RETRY_AFTER, b"0")]
    waits = headers.get_all(RETRY_AFTER)
    if len(waits) == 1 and RETRY_AFTER_MS not in headers:
        wait = waits[0].strip()
        if wait.isdigit() and len(wait) <= _WAIT_DIGITS and int(wait) > 0:
            sets.append((RETRY_AFTER_MS, b"%d" % (int(wait) * 1000)))
    return tuple(sets)


def _ingress(headers: HeaderView, ctx: RuleContext, now: float, base: Audit) -> Decision:
    removed: list[str] = []
    if ctx.handoff_header in headers:
        removed.append(ctx.handoff_header)
    anthropic = ctx.prefixes.anthropic
    for name, value in headers:
        # An Anthropic credential anywhere else (another header, a header's name, the URL as LiteLLM decodes it)
        # would reach LiteLLM as it is.
        if anthropic in name_bytes(name):
            raise _Reject(_misplaced_in_name())
        if (
            name not in CREDENTIAL_HEADERS
            and name != ctx.handoff_header
            and any(anthropic in form for form in _decodings(value))
        ):
            raise _Reject(_misplaced(name))
    sealed: list[tuple[str, Credential]] = []
    for name in CREDENTIAL_HEADERS:
        credential = _credential_in(headers, name, ctx.prefixes)
        if credential is not None:
            removed.append(name)
            sealed.append((name, credential))
    sets: list[tuple[str, bytes]] = []
    if sealed:
        verdict = ctx.routes.for_client_credential(headers.one(METHOD), headers.one(PATH))
        if verdict.refusal is not None:
            raise _Reject(Rejection(400, "invalid_request_error", verdict.refusal, "route-drops-credential"))
        if ctx.litellm_requires_key and not _litellm_key_left(headers, ctx, removed):
            raise _Reject(_no_litellm_key())
        if verdict.path is not None:
            sets.append((PATH, verdict.path))
        handoff = ctx.keyring.seal([(name, c.token) for name, c in sealed], now)
        sets.append((ctx.handoff_header, handoff.encode("ascii")))
    return _decision(removed, sets, base, sealed=tuple(f"{name}={c.fingerprint()}" for name, c in sealed))


def _egress_anthropic(headers: HeaderView, ctx: RuleContext, now: float, base: Audit) -> Decision:
    from_litellm = _from_litellm(headers, ctx.egress_token)
    if not from_litellm and ctx.handoff_header in headers:
        raise _Reject(_unproven())
    sealed = _open_handoff(headers, ctx, now)
    candidates: tuple[tuple[Source, Credential | None], ...] = (
        (Source.SEALED_X_API_KEY, sealed.get(X_API_KEY)),
        (Source.SEALED_AUTHORIZATION, sealed.get(AUTHORIZATION)),
        (Source.REQUEST_X_API_KEY, _credential_in(headers, X_API_KEY, ctx.prefixes)),
        (Source.REQUEST_AUTHORIZATION, _credential_in(headers, AUTHORIZATION, ctx.prefixes)),
        (Source.SERVER, ctx.server_credential if from_litellm else None),
    )
    source, chosen = next(((s, c) for s, c in candidates if c is not None), (Source.NONE, None))

    sets = list(chosen.headers()) if chosen is not None else []
    stripped: list[str] = []
    kept: list[str] = []
    for name in headers.names():
        (stripped if ctx.strips_on_egress(name) else kept).append(name)
    scrubbed = _holding_secrets(headers, kept, ctx)
    # A header the allowlist drops contributes no flags; the OAuth flag is still added when the credential needs it.
    keep_beta = ctx.allowed(ANTHROPIC_BETA) and ANTHROPIC_BETA not in scrubbed
    beta_in = headers.get_all(ANTHROPIC_BETA) if keep_beta else ()
    beta = _merge_beta(beta_in, ctx.oauth_beta, chosen is not None and chosen.needs_oauth_beta)
    if beta:
        sets.append((ANTHROPIC_BETA, beta))
    dropped = beta == b"" or (ANTHROPIC_BETA in headers and not keep_beta)  # a set beta wins (_decision)
    if dropped and ANTHROPIC_BETA not in stripped:
        stripped.append(ANTHROPIC_BETA)
    removed = [*stripped, *(n for n in scrubbed if n not in stripped)]
    secret_names = frozenset(n for n in removed if ctx.name_holds_secret(n))
    if chosen is None:
        return _decision(removed, sets, base, source=source, scrubbed=scrubbed, secret_names=secret_names)
    return _decision(
        removed,
        sets,
        base,
        source=source,
        kind=chosen.kind.value,
        fingerprint=chosen.fingerprint(),
        scrubbed=scrubbed,
        secret_names=secret_names,
    )


def _egress_other(headers: HeaderView, ctx: RuleContext, base: Audit) -> Decision:
    """Non-Anthropic upstreams: strip what is ours or Anthropic's, leave the provider auth LiteLLM set."""
    for name in CREDENTIAL_HEADERS:
        _credential_in(headers, name, ctx.prefixes)  # refuses a header holding more than one credential
    anthropic = ctx.prefixes.anthropic
    token = ctx.egress_token
    holding = [
        n
        for n in headers.names()
        if anthropic in name_bytes(n)
        or any(anthropic in v or (token is not None and token in v) for v in headers.get_all(n))
    ]
    if PATH in holding:
        raise _Reject(_misplaced(PATH))
    removed = [
        name
        for name in headers.names()
        if not _untouchable(name) and (name == ctx.handoff_header or name in ctx.litellm_headers or name in holding)
    ]
    secret_names = frozenset(n for n in removed if anthropic in name_bytes(n))
    return _decision(removed, (), base, source=Source.NONE, secret_names=secret_names)


def _decision(
    removed: list[str],
    sets: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]],
    base: Audit,
    *,
    source: Source | None = None,
    kind: str | None = None,
    fingerprint: str | None = None,
    sealed: tuple[str, ...] = (),
    scrubbed: tuple[str, ...] = (),
    secret_names: frozenset[str] = frozenset(),
) -> Decision:
    """A set replaces every value of its name, so a name that is set is never also removed.

    The audit record names removed headers, except a name that itself holds a credential: that one is logged as
    a digest (``name:sha256:…``), never as it is.
    """
    set_names = {name for name, _ in sets}
    remove = tuple(n for n in removed if n not in set_names)

    def shown(names: tuple[str, ...]) -> tuple[str, ...]:
        if not secret_names:
            return names
        return tuple(_hidden_name(n) if n in secret_names else n for n in names)

    audit = Audit(
        base.leg,
        base.policy,
        base.outcome,
        base.request_id,
        source,
        kind,
        fingerprint,
        sealed,
        shown(remove),
        None,
        shown(scrubbed),
    )
    return Decision(remove, tuple(sets), audit)


def _hidden_name(name: str) -> str:
    return "name:sha256:" + hashlib.sha256(name_bytes(name)).hexdigest()[:8]


def _decodings(value: bytes) -> tuple[bytes, ...]:
    """A value as sent and, if it holds a percent-escape, decoded once and twice: LiteLLM decodes the URL once (and
    may log that form), and an escaped key in any header is a key to whoever reads it."""
    if b"%" not in value:
        return (value,)
    once = unquote_to_bytes(value)
    return (value, once, unquote_to_bytes(once))


def _open_handoff(headers: HeaderView, ctx: RuleContext, now: float) -> dict[str, Credential]:
    values = headers.get_all(ctx.handoff_header)
    if not values:
        return {}
    if len({v.strip() for v in values}) > 1:
        raise _Reject(_conflict(ctx.handoff_header))
    try:
        opened = ctx.keyring.open(values[0], now)
        if not ctx.opens.admit(opened.nonce, opened.issued_at + ctx.keyring.ttl_seconds, now):
            raise SealError(SealFailure.REPLAYED)
        found: dict[str, Credential] = {}
        for origin, token in opened.entries:
            credential = ctx.prefixes.classify(token)  # a malformed one is seal-malformed, whatever its header
            if credential is not None and origin in CREDENTIAL_HEADERS:
                found.setdefault(origin, credential)
    except UnreadableCredential:
        # Only our own ingress seals, and it seals nothing malformed: this handoff is not one of ours.
        raise _Reject(_unverifiable(SealFailure.MALFORMED)) from None
    except SealError as exc:
        raise _Reject(_unverifiable(exc.reason)) from None
    return found


def _from_litellm(headers: HeaderView, token: bytes | None) -> bool:
    """E0: LiteLLM proves itself by sending the egress token as its Anthropic key (compared in constant time)."""
    if token is None:
        return True
    values = headers.get_all(X_API_KEY)
    return len(values) == 1 and hmac.compare_digest(values[0].strip(), token)


def _litellm_key_left(headers: HeaderView, ctx: RuleContext, removed: Iterable[str]) -> bool:
    """I8: whether a header LiteLLM reads its callers' keys from still holds one once the ingress has sealed.

    Any value counts but an empty one or a placeholder (``None``, ``Bearer null``): which key is valid, and
    whether another scheme is, is LiteLLM's to judge.
    """
    for name in (*CREDENTIAL_HEADERS, *ctx.litellm_headers):
        if name in removed:
            continue
        for value in headers.get_all(name):
            token = _BEARER_SCHEME.sub(b"", value.strip()).strip()  # anchored: at most one match
            if token.lower() not in NULLISH:
                return True
    return False


def _credential_in(headers: HeaderView, name: str, prefixes: Prefixes) -> Credential | None:
    """The Anthropic credential one credential header carries, None if it carries a foreign one or none."""
    try:
        return prefixes.read(name, headers.get_all(name))
    except UnreadableCredential as exc:
        raise _Reject(_unreadable(exc.header, exc.problem)) from None


def _holding_secrets(headers: HeaderView, names: Iterable[str], ctx: RuleContext) -> tuple[str, ...]:
    """The kept headers whose value holds a credential; a URL that does refuses the request.

    Of the headers no rule may touch, only ``:path`` reaches the upstream as sent: Envoy rewrites the host, and
    the rest carry framing.
    """
    found = []
    for name in names:
        if name != PATH and _untouchable(name):
            continue
        if ctx.name_holds_secret(name):
            found.append(name)
            continue
        for value in headers.get_all(name):
            if any(ctx.holds_secret(form) for form in _decodings(value)):
                if name == PATH:
                    raise _Reject(_misplaced(name))
                found.append(name)
                break
    return tuple(found)


def _untouchable(name: str) -> bool:
    return name.startswith(":") or name in NEVER_TOUCHED


def _merge_beta(values: tuple[bytes, ...], flag: bytes, want: bool) -> bytes | None:
    """The new ``anthropic-beta`` value, b"" to drop the header, or None to leave it exactly as it is."""
    flags: list[bytes] = []
    for value in values:
        for part in value.split(b","):
            part = part.strip()
            if part and part not in flags:
                flags.append(part)
    if want and flag not in flags:
        flags.append(flag)
    elif not want and flag in flags:
        flags.remove(flag)
    merged = b",".join(flags)
    if len(values) == 1 and merged == values[0]:
        return None
    if not values and not merged:
        return None
    return merged


def _conflict(name: str) -> Rejection:
    return Rejection(
        400,
        "invalid_request_error",
        f"The request carries {_PROBLEMS[Problem.CONFLICT]} the {name} header.",
        f"{Problem.CONFLICT}-{name}",
    )


_PROBLEMS = {
    Problem.CONFLICT: "conflicting values for",
    Problem.MULTIPLE: "more than one credential in",
    Problem.MALFORMED: "a malformed credential in",
}


def _unreadable(name: str, problem: Problem) -> Rejection:
    if problem == Problem.CONFLICT:
        return _conflict(name)
    return Rejection(
        400,
        "invalid_request_error",
        f"The request carries {_PROBLEMS[problem]} the {name} header; send exactly one credential.",
        f"{problem}-{name}",
    )


def _no_litellm_key() -> Rejection:
    # 400, as LiteLLM answers a request without a key: Claude Code shows the message and does not retry, where a
    # 401 would send a subscriber to /login for an Anthropic token that is fine.
    return Rejection(
        400,
        "invalid_request_error",
        "This gateway needs a LiteLLM key next to your own Anthropic credential: LiteLLM authenticates you with it, "
        "and never sees your Anthropic credential. Send it as x-litellm-api-key: Bearer <LiteLLM key> (Claude "
        "Code: ANTHROPIC_CUSTOM_HEADERS='x-litellm-api-key: Bearer <LiteLLM key>').",
        "no-litellm-key",
    )


def _misplaced(name: str) -> Rejection:
    where = "URL" if name == PATH else f"{name} header"
    return Rejection(
        400,
        "invalid_request_error",
        f"The request's {where} carries a credential; send it only as x-api-key or Authorization: Bearer.",
        f"misplaced-{name.removeprefix(':')}",
        "misplaced-path" if name == PATH else "misplaced-header",
    )


def _misplaced_in_name() -> Rejection:
    return Rejection(
        400,
        "invalid_request_error",
        "A header name in the request carries a credential; send it only as x-api-key or Authorization: Bearer.",
        "misplaced-header-name",
        "misplaced-header",
    )


# The egress answers LiteLLM, whose router cools a deployment down for everyone on 401, 402, 404, 408, 429 and 5xx,
# retries 408, 409, 429 and 5xx, and (1.108.7) falls back on anything but a provider's 400: a refusal of one request
# is a 400, so it fails that request only (docs/rules.md, "Refusals and LiteLLM's router").
REFUSAL_STATUS = 400


def _unverifiable(reason: SealFailure) -> Rejection:
    if reason == SealFailure.TRACKER_FULL:
        # Not this request's doing: the gateway is full, and says so as Anthropic does when overloaded.
        return Rejection(
            503,
            "overloaded_error",
            "The credential gateway is counting as many live handoffs as it can; retry shortly.",
            f"seal-{reason}",
        )
    return Rejection(
        REFUSAL_STATUS,
        "invalid_request_error",
        f"The credential handoff header could not be verified ({reason}).",
        f"seal-{reason}",
    )


def _unproven() -> Rejection:
    return Rejection(
        REFUSAL_STATUS,
        "invalid_request_error",
        "The egress leg releases a sealed credential only to LiteLLM, and this request did not carry LiteLLM's "
        "egress token as its Anthropic key (set LiteLLM's Anthropic api_key to the gateway's egress token).",
        "egress-unproven",
    )


def _misconfigured(what: str, reason: str) -> Rejection:
    return Rejection(500, "api_error", f"The credential gateway is misconfigured: {what}.", reason)
