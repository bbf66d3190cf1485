"""What a client, an operator or Envoy sees, pinned exactly: every rejection, E0 at the rules level, ids, routes,
the transport's handling of one stream. Written against the mutants that survived the other tests (scripts/mutation.sh).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ext_proc.audit import AuditLog
from ext_proc.config import Config
from ext_proc.credentials import ApiKey, Prefixes, Problem, UnreadableCredential, read_token
from ext_proc.headers import HeaderView
from ext_proc.metrics import Metrics
from ext_proc.reload import rule_context
from ext_proc.routes import Routes, route_path
from ext_proc.rules import Audit, Decision, Rejection, RuleContext, Source, decide, loggable_id
from ext_proc.seal import Keyring, OpenCounter, SealError, SealFailure
from ext_proc.secrets import Secrets
from ext_proc.server import CredentialProcessor, response_of
from ext_proc.tracing import Tracing
from tests.support.decisions import KEY_A, KEYRING, NOW, context, handoff, run
from tests.support.extproc import headers_message

H = "x-credential-handoff"
KEY = "sk-ant-api03-PINNEDKEY"
OAUTH = "sk-ant-oat01-PINNEDOAUTH"
TOKEN = b"egress-test-token-0123456789abcdefghij"
SERVER = ApiKey(b"sk-ant-api03-SERVERKEY")


def with_token(**config: Any) -> RuleContext:
    return rule_context(Config(**config), Secrets(keyring=KEYRING, server_credential=SERVER, egress_token=TOKEN))


REJECTIONS = [
    # (leg, policy, headers, status, error type, message, reason)
    ("egress", "anthropic", ((H, "v1.x"),), 400, "invalid_request_error",
     "The egress leg releases a sealed credential only to LiteLLM, and this request did not carry LiteLLM's egress "
     "token as its Anthropic key (set LiteLLM's Anthropic api_key to the gateway's egress token).", "egress-unproven"),
    ("ingress", "", (("x-note", KEY),), 400, "invalid_request_error",
     "The request's x-note header carries a credential; send it only as x-api-key or Authorization: Bearer.",
     "misplaced-x-note"),
    ("ingress", "", ((":path", f"/v1/messages?k={KEY}"), ("x-api-key", KEY)), 400, "invalid_request_error",
     "The request's URL carries a credential; send it only as x-api-key or Authorization: Bearer.", "misplaced-path"),
    ("ingress", "", (("x-api-key", f"{KEY},{KEY}2"),), 400, "invalid_request_error",
     "The request carries more than one credential in the x-api-key header; send exactly one credential.",
     "multiple-x-api-key"),
    ("ingress", "", (("x-api-key", f"{KEY}."),), 400, "invalid_request_error",
     "The request carries a malformed credential in the x-api-key header; send exactly one credential.",
     "malformed-x-api-key"),
    ("egress", "anthropic", (("x-api-key", KEY), ("x-api-key", KEY + "2")), 400, "invalid_request_error",
     "The request carries conflicting values for the x-api-key header.", "conflict-x-api-key"),
    ("egress", "anthropic", ((H, "v1.a"), (H, "v1.b"), ("x-api-key", TOKEN.decode())), 400, "invalid_request_error",
     "The request carries conflicting values for the x-credential-handoff header.", "conflict-x-credential-handoff"),
    ("egress", "anthropic", ((H, "v1.AAAA"), ("x-api-key", TOKEN.decode())), 400, "invalid_request_error",
     "The credential handoff header could not be verified (malformed).", "seal-malformed"),
    ("sideways", "", (), 500, "api_error", "The credential gateway is misconfigured: unknown leg 'sideways'.",
     "config-leg"),
    ("egress", "gemini", (), 500, "api_error", "The credential gateway is misconfigured: unknown policy 'gemini'.",
     "config-policy"),
    ("ingress", "bogus", (), 500, "api_error", "The credential gateway is misconfigured: unknown policy 'bogus'.",
     "config-policy"),
    ("ingress", "", ((":method", "POST"), (":path", "/v1/skills"), ("x-api-key", KEY)), 400, "invalid_request_error",
     "LiteLLM answers POST /v1/skills with its own call, which would not carry your own Anthropic credential "
     "(it would use the operator's key instead); use LiteLLM's Anthropic pass-through, /anthropic/v1/skills, or send "
     "only your LiteLLM key.", "route-drops-credential"),
    ("ingress", "", (("x-sk-ant-api03-named", "1"),), 400, "invalid_request_error",
     "A header name in the request carries a credential; send it only as x-api-key or Authorization: Bearer.",
     "misplaced-header-name"),
    ("ingress", "", ((":path", "/v1/messages?k=sk%2Dant%2Dapi03-K"),), 400, "invalid_request_error",
     "The request's URL carries a credential; send it only as x-api-key or Authorization: Bearer.", "misplaced-path"),
    ("egress", "anthropic", ((":path", "/v1/messages?k=sk%252Dant%252Dapi03-K"),), 400, "invalid_request_error",
     "The request's URL carries a credential; send it only as x-api-key or Authorization: Bearer.", "misplaced-path"),
]  # fmt: skip


def test_a_removed_header_whose_name_holds_a_key_is_logged_as_a_digest() -> None:
    name = "x-stainless-sk-master-hidden1234"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    decision = decide("egress", "anthropic", HeaderView.of((name, "1"), ("x-junk", "2")), with_token(), NOW)
    # Stripped (off the allowlist) first, then scrubbed (an allowlisted name holding a key).
    assert decision.remove == ("x-junk", name)
    assert decision.audit.removed == ("x-junk", f"name:sha256:{digest}")
    assert decision.audit.scrubbed == (f"name:sha256:{digest}",)
    other = "x-sk-ant-api03-hidden"
    on_other = decide("egress", "other", HeaderView.of((other, "1"), ("x-api-key", TOKEN.decode())), with_token(), NOW)
    assert on_other.remove == (other, "x-api-key")
    assert on_other.audit.removed == ("name:sha256:" + hashlib.sha256(other.encode()).hexdigest()[:8], "x-api-key")


@pytest.mark.parametrize(("leg", "policy", "headers", "status", "kind", "message", "reason"), REJECTIONS)
def test_every_rejection_exactly(
    leg: str, policy: str, headers: tuple[tuple[str, str], ...], status: int, kind: str, message: str, reason: str
) -> None:
    decision, _ = run(leg, policy, HeaderView.of(*headers, ("x-request-id", "rid-1")), with_token())
    assert decision.rejection == Rejection(status, kind, message, reason)
    assert decision.audit == Audit(leg, policy, "reject", "rid-1", reason=reason)
    assert decision.rejection.body() == (
        b'{"type":"error","error":{"type":"' + kind.encode() + b'","message":"' + message.encode() + b'"}}'
    )


@pytest.mark.parametrize(
    ("request_line", "refusal"),
    [
        ("POST /anthropic/v1/files", "this route is not available with your own credential through LiteLLM"),
        ("POST /models/c:generateContent", "this route is not available with your own credential through LiteLLM"),
        ("POST /v1/files", "use LiteLLM's Anthropic pass-through, /anthropic/v1/files"),
        ("POST /v1/responses", "use LiteLLM's Anthropic pass-through, /anthropic/v1/responses"),
    ],
)
def test_route_refusals_say_what_to_use(request_line: str, refusal: str) -> None:
    method, path = request_line.split(" ")
    verdict = Routes.shipped().for_client_credential(method.encode(), path.encode())
    assert verdict.path is None and verdict.refusal is not None
    assert verdict.refusal == (
        f"LiteLLM answers {method} {path} with its own call, which would not carry your own Anthropic credential "
        f"(it would use the operator's key instead); {refusal}, or send only your LiteLLM key."
    )


def test_a_route_no_release_serves_is_refused_saying_so() -> None:
    verdict = Routes.shipped().for_client_credential(b"POST", b"/nowhere/\x01")
    assert verdict.refusal == (
        "LiteLLM serves no route POST '/nowhere/\\x01'; requests with your own Anthropic credential go only to "
        "routes that carry it to Anthropic."
    )


@pytest.mark.parametrize(
    ("raw", "route"),
    [(b"/v1/messages?a=1?b=2", "/v1/messages"), (b"", ""), (b"/", "/"), (b"//v1//skills//", "//v1//skills//"),
     (b"/a/./b/../c", "/a/./b/../c"), (b"/v1/%2e%2e/skills", "/v1/../skills"), (b"/v1/%2Fx", "/v1//x"),
     (b"/\xc3\xa9%C3%A9", "/\u00c3\u00a9\u00e9"), (b"/%ff", "/\ufffd"), (b"/Xyz/X", "/Xyz/X"), (b"/a#b", "/a#b")],
)  # fmt: skip
def test_paths_are_matched_as_uvicorn_hands_them_to_litellm(raw: bytes, route: str) -> None:
    assert route_path(raw) == route


EGRESS_PROOF = [
    # (headers besides x-request-id, source that leaves, credential that leaves)
    ((("x-api-key", TOKEN.decode()),), Source.SERVER, ("x-api-key", SERVER.token.decode())),
    ((("x-api-key", f"  {TOKEN.decode()} "),), Source.SERVER, ("x-api-key", SERVER.token.decode())),
    ((), Source.NONE, None),
    ((("x-api-key", TOKEN.decode()[:-1] + "X"),), Source.NONE, None),
    ((("x-api-key", TOKEN.decode()), ("x-api-key", TOKEN.decode())), Source.NONE, None),
    ((("authorization", f"Bearer {TOKEN.decode()}"),), Source.NONE, None),
    ((("x-api-key", TOKEN.decode()), ("authorization", f"Bearer {OAUTH}")), Source.REQUEST_AUTHORIZATION,
     ("authorization", f"Bearer {OAUTH}")),
    ((("authorization", f"Bearer {OAUTH}"),), Source.REQUEST_AUTHORIZATION, ("authorization", f"Bearer {OAUTH}")),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "source", "leaves"), EGRESS_PROOF)
def test_e0_only_the_egress_token_releases_the_server_credential(
    headers: tuple[tuple[str, str], ...], source: Source, leaves: tuple[str, str] | None
) -> None:
    decision, out = run("egress", "anthropic", HeaderView.of(*headers), with_token())
    assert decision.rejection is None and decision.audit.source == source
    sent = [(n, v.decode()) for n, v in out if n in ("x-api-key", "authorization")]
    assert sent == ([leaves] if leaves else [])


def test_e0_with_the_token_a_handoff_opens_and_without_a_token_configured_no_proof_is_asked() -> None:
    sealed = handoff(("x-api-key", KEY))
    decision, out = run("egress", "anthropic", HeaderView.of((H, sealed), ("x-api-key", TOKEN.decode())), with_token())
    assert decision.audit.source == Source.SEALED_X_API_KEY and out.get_all("x-api-key") == (KEY.encode(),)
    assert with_token().egress_token == TOKEN
    decision, _ = run("egress", "anthropic", HeaderView.of((H, handoff(("x-api-key", KEY)))), context(SERVER))
    assert decision.audit.source == Source.SEALED_X_API_KEY


def test_forwarded_decisions_carry_their_whole_audit_record() -> None:
    headers = HeaderView.of(("x-api-key", TOKEN.decode()), ("x-request-id", "rid-2"), ("x-stainless-a", "sk-abcdef"))
    decision, _ = run("egress", "anthropic", headers, with_token())
    fingerprint = SERVER.fingerprint()
    assert decision.audit == Audit("egress", "anthropic", "forward", "rid-2", Source.SERVER, "api-key", fingerprint,
                                   (), ("x-stainless-a",), None, ("x-stainless-a",))  # fmt: skip
    decision, _ = run("egress", "anthropic", HeaderView.of(("x-stainless-a", "sk-abcdef")), context())
    assert decision.audit == Audit("egress", "anthropic", "forward", None, Source.NONE, None, None, (),
                                   ("x-stainless-a",), None, ("x-stainless-a",))  # fmt: skip
    decision, _ = run("egress", "other", HeaderView.of(("x-note", KEY)), context())
    assert decision.audit == Audit("egress", "other", "forward", None, Source.NONE, removed=("x-note",))


@pytest.mark.parametrize(("name", "value"), [("host", "sk-master-1234.example"), (":authority", "sk-master-1234")])
def test_untouchable_headers_are_neither_removed_nor_refused(name: str, value: str) -> None:
    """Envoy rewrites the host upstream; a rule that removed it would break routing."""
    decision, _ = run("egress", "anthropic", HeaderView.of((name, value), ("x-api-key", KEY)))
    assert decision.rejection is None and name not in decision.remove and decision.audit.scrubbed == ()


@pytest.mark.parametrize(
    ("raw", "logged"),
    [(b"d121422c-bab7-402a", "d121422c-bab7-402a"), (b"a.b:c_d", "a.b:c_d"), (b"Req-ID.9", "Req-ID.9"),
     (b"x" * 128, "x" * 128),
     (b"x" * 129, "sha256:" + hashlib.sha256(b"x" * 129).hexdigest()[:16]),
     (b"sk-abcd", "sha256:" + hashlib.sha256(b"sk-abcd").hexdigest()[:16]),
     (b"id-sk-abcd", "sha256:" + hashlib.sha256(b"id-sk-abcd").hexdigest()[:16]),
     (b"line\nforged", "sha256:" + hashlib.sha256(b"line\nforged").hexdigest()[:16]), (b"", "sha256:e3b0c44298fc1c14")],
)  # fmt: skip
def test_request_ids_are_logged_only_when_id_shaped(raw: bytes, logged: str) -> None:
    assert loggable_id(raw) == logged


def test_bearer_is_taken_once_and_a_bare_repeat_is_no_bearer() -> None:
    with pytest.raises(UnreadableCredential) as info:
        read_token("authorization", (b"Bearer bearer X",))
    assert info.value.problem == Problem.MULTIPLE
    with pytest.raises(UnreadableCredential) as info:
        read_token("authorization", (b"Bearer A,A",))
    assert info.value.problem == Problem.MULTIPLE
    assert read_token("x-api-key", (b"",)) == b"" and read_token("x-api-key", (b" , ",)) == b""
    assert str(UnreadableCredential("x-api-key", Problem.MULTIPLE)) == "x-api-key: multiple"


def test_a_prefix_may_hold_any_characters() -> None:
    prefixes = Prefixes(b"corp.", b"corp.oat")
    assert prefixes.classify(b"corp.abc") == ApiKey(b"corp.abc")
    assert repr(ApiKey(b"sk-ant-api03-K")).startswith("ApiKey(api-key:")
    assert hash(ApiKey(b"sk-ant-api03-A")) != hash(ApiKey(b"sk-ant-api03-B"))
    assert repr(HeaderView.of(("x-api-key", KEY), ("a", "b"))) == "HeaderView(names=['x-api-key', 'a'])"


def test_seal_boundaries() -> None:
    kid = hashlib.sha256(KEY_A).digest()[:4]
    ring = Keyring([KEY_A], 1)
    for size, reason in ((31, SealFailure.MALFORMED), (32, SealFailure.TAMPERED)):
        with pytest.raises(SealError) as info:
            ring.open(b"v1." + base64.urlsafe_b64encode(kid + bytes(size - 4)).rstrip(b"="), NOW)
        assert info.value.reason == reason
    assert str(SealError(SealFailure.EXPIRED)) == "handoff header rejected: expired"
    bad: list[tuple[list[bytes], int, str]] = [
        ([], 1, "a keyring needs at least one key"),
        ([b"k"], 1, "a seal key must be 32 bytes, got 1"),
        ([KEY_A], 0, "the seal lifetime must be positive"),
    ]
    for keys, ttl, message in bad:
        with pytest.raises(ValueError) as error:
            Keyring(keys, ttl)
        assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        OpenCounter(0)
    assert str(error.value) == "a handoff must be allowed at least one open"
    counter = OpenCounter(max_opens=1)
    assert counter.admit(b"n", 10.0, 10.0) and not counter.admit(b"n", 10.0, 10.0), "kept until it expires"


class _Context:
    """What CredentialProcessor.process uses of a grpc.aio context."""

    def __init__(self, messages: list[pb.ProcessingRequest], metadata: tuple[tuple[str, str], ...]) -> None:
        self._messages = messages
        self._metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> Any:
        return self._messages.pop(0) if self._messages else grpc.aio.EOF  # type: ignore[attr-defined]

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise asyncio.CancelledError


def _process(processor: CredentialProcessor, context: _Context) -> pb.ProcessingResponse | None:
    async def go() -> pb.ProcessingResponse | None:
        try:
            return await processor.process(None, context)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            return None

    return asyncio.run(go())


EGRESS_META = (("x-ext-proc-leg", "egress"), ("x-ext-proc-policy", "anthropic"))


def test_process_decides_with_its_clock_counts_by_leg_and_policy_and_caches_forwarded_edits() -> None:
    metrics = Metrics()
    late = NOW + 10_000
    processor = CredentialProcessor(lambda: context(), AuditLog(1.0, "text"), metrics, clock=lambda: late)
    sealed = handoff(("x-api-key", KEY)).encode()
    answer = _process(processor, _Context([headers_message((H, sealed))], EGRESS_META))
    assert answer is not None and answer.immediate_response.status.code == 400, "the processor's clock: expired"
    sample = metrics.registry.get_sample_value
    assert sample("ext_proc_rejections_total", {"reason": "seal-expired"}) == 1
    first = _process(processor, _Context([headers_message(("x-api-key", KEY.encode()))], EGRESS_META))
    second = _process(processor, _Context([headers_message(("x-api-key", KEY.encode()))], EGRESS_META))
    assert first is second, "one response object per distinct edit"
    labels = {"leg": "egress", "policy": "anthropic", "source": "request-x-api-key"}
    assert sample("ext_proc_requests_total", labels) == 2
    assert sample("ext_proc_decision_seconds_count", {"leg": "egress"}) == 3
    assert 0 <= (sample("ext_proc_decision_seconds_sum", {"leg": "egress"}) or 0) < 1


def test_process_without_metadata_decides_with_no_leg_and_refuses_unknown_messages_plainly() -> None:
    processor = CredentialProcessor(lambda: context(), AuditLog(1.0, "text"), Metrics())
    answer = _process(processor, _Context([headers_message()], ()))
    assert answer is not None and answer.immediate_response.details == "ext_proc_credentials_config_leg"
    assert b"unknown leg ''" in answer.immediate_response.body
    empty = _Context([], EGRESS_META)
    assert _process(processor, empty) is None
    assert empty.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before any ProcessingRequest")
    unknown = _Context([pb.ProcessingRequest()], EGRESS_META)
    assert _process(processor, unknown) is None
    assert unknown.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "ProcessingRequest without a known message")


def test_response_of_builds_a_mutation_for_sets_alone_and_continues_for_nothing() -> None:
    audit = Audit("egress", "anthropic", "forward", None)
    only_set = response_of(Decision((), (("x-api-key", b"k"),), audit))
    assert [h.header.key for h in only_set.request_headers.response.header_mutation.set_headers] == ["x-api-key"]
    nothing = response_of(Decision((), (), audit))
    assert nothing == pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    assert nothing.WhichOneof("response") == "request_headers"


def test_process_traces_each_decision_with_its_own_time_and_envoy_s_parent() -> None:
    """The transport hands the tracer the decision, its wall-clock span and the call's metadata (tracing.py)."""
    exporter = InMemorySpanExporter()
    tracing = Tracing.start(Config(), exporter)
    assert tracing is not None
    processor = CredentialProcessor(lambda: context(), AuditLog(1.0, "text"), Metrics(), tracing=tracing)
    envoy = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
    client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = headers_message(("x-api-key", KEY.encode()), ("traceparent", client.encode()))
    before = time.time_ns()
    _process(processor, _Context([request], (*EGRESS_META, ("traceparent", envoy))))
    _process(processor, _Context([request], EGRESS_META))
    after = time.time_ns()
    tracing.shutdown()
    first, second = exporter.get_finished_spans()
    assert [s.parent.span_id if s.parent else None for s in (first, second)] == [0xB7AD6B7169203331, 0x00F067AA0BA902B7]
    for span in (first, second):
        assert span.start_time is not None and span.end_time is not None
        assert before < span.start_time < span.end_time <= after, "the span covers the decision, and only it"
        assert dict(span.attributes or {}) == {
            "ext_proc.leg": "egress", "ext_proc.policy": "anthropic", "ext_proc.outcome": "forward",
            "ext_proc.credential.source": "request-x-api-key", "ext_proc.credential.kind": "api-key",
        }  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "reason", "label"),
    [
        ((("x-chosen-by-client", "sk-ant-api03-K"),), "misplaced-x-chosen-by-client", "misplaced-header"),
        (((":path", "/v1/messages?key=sk-ant-api03-K"),), "misplaced-path", "misplaced-path"),
        ((("x-api-key", "sk-ant-api03-K, sk-ant-api03-L"),), "multiple-x-api-key", "multiple-x-api-key"),
    ],
)
def test_a_rejection_s_metric_label_never_holds_a_name_the_client_chose(
    headers: tuple[tuple[str, str], ...], reason: str, label: str
) -> None:
    decision, _ = run("ingress", "anthropic", HeaderView.of(*headers))
    assert decision.rejection is not None
    assert (decision.rejection.reason, decision.rejection.metric_label) == (reason, label)


def test_a_decision_s_span_lasts_exactly_what_its_latency_metric_observed() -> None:
    """The span's start is the wall clock's end less the measured decision time, and its end is that clock reading:
    span duration and the histogram's sum are one measurement."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ext_proc.tracing import Tracing

    exporter = InMemorySpanExporter()
    tracing = Tracing.start(Config(), exporter)
    assert tracing is not None
    metrics = Metrics()
    processor = CredentialProcessor(lambda: context(), AuditLog(1.0, "text"), metrics, tracing=tracing)
    before = time.time_ns()
    _process(processor, _Context([headers_message(("x-api-key", KEY.encode()))], EGRESS_META))
    after = time.time_ns()
    tracing.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.start_time is not None and span.end_time is not None
    observed = metrics.registry.get_sample_value("ext_proc_decision_seconds_sum", {"leg": "egress"})
    assert observed == (span.end_time - span.start_time) * 1e-9
    assert before <= span.end_time <= after and 0 < observed < 1
