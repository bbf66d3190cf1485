"""Envoy ext_proc sidecar that sends LLM credentials only where they belong."""
