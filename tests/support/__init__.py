"""The harness the tests and the benchmark (bench/) share: real processes (Envoy, the ext-proc server, `ext-proc up`,
LiteLLM from PyPI, Claude Code), the recording Anthropic stand-in, the client fixtures and the rule-test builders.

It imports nothing from tests/ outside this package, so bench/ can use it as it is.
"""
