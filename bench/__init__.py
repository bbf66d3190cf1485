"""The benchmark (`python -m bench.run`): ratios in one run against plain Envoy and LiteLLM alone.

It starts its processes with the tests' harness (tests/support/), so what it measures is what the tests run.
"""
