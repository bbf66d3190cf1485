"""The names Envoy's config, the transport and the rules share, in a module that imports nothing of ours.

Envoy's filter config attaches the leg and the policy to every ext_proc stream as gRPC metadata; the server reads
them there and the rules decide by them. Writing the config (``ext-proc envoy-config``) needs these names and
nothing of gRPC.
"""

from __future__ import annotations

from enum import StrEnum

LEG_METADATA = "x-ext-proc-leg"
POLICY_METADATA = "x-ext-proc-policy"
# The dynamic metadata the egress's request filter emits when a request leaves on a client's own credential, and
# the answer filter forwards back with the upstream's response headers (rule E9). Only filters can write it.
ANSWER_NAMESPACE = "ext_proc.credentials"
ANSWER_KEY = "credential"
ANSWER_CLIENTS = "client"


class Leg(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Policy(StrEnum):
    ANTHROPIC = "anthropic"
    OTHER = "other"


LEGS = frozenset(leg.value for leg in Leg)
POLICIES = frozenset(p.value for p in Policy)
