"""A plain HTTP/1.1 client that sends header sets exactly as given (order and case), as recorded clients did."""

from __future__ import annotations

import http.client
import urllib.request

from ext_proc.envoy import HostPort


def send(
    at: HostPort,
    method: str,
    path: str,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    body: bytes = b"",
    host: str | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """Recorded header sets carry the recorder's Host; it is replaced by `host`, else by the address sent to."""
    conn = http.client.HTTPConnection(at.host, at.port, timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    names = {k.lower() for k, _ in headers}
    for name, value in headers:
        if name.lower() not in ("host", "content-length"):
            conn.putheader(name, value)
    conn.putheader("Host", host or str(at))
    if body or "content-length" in names:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body or None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, response


def get_text(url: str, timeout: float = 5.0) -> str:
    """GET a local page (a metrics or stats endpoint) and return its text."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
        return str(response.read().decode())
