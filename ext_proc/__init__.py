"""Envoy ext_proc sidecar that sends LLM credentials only where they belong."""

__version__ = "0.1.0"
