"""Print the routes a LiteLLM proxy serves, in the order its router tries them, as one JSON document.

Run with the Python of an environment where LiteLLM is installed (it imports LiteLLM's app; nothing is started):

    .cache/litellm-1.108.7/bin/python scripts/litellm_routes.py > ext_proc/data/litellm-routes-1.108.7.json

Each route is its methods (null: any), its path template and the regular expression Starlette itself compiled
for it, so the gateway matches paths with LiteLLM's own expressions instead of a re-implementation.
``tests/e2e/test_routes.py`` regenerates this for every supported release and fails when it differs from the
copy ext_proc ships.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _entry(route: Any, template: str, methods: Any) -> dict[str, Any]:
    regex = getattr(route, "path_regex", None)
    if regex is None:
        # The gateway matches with Starlette's own expressions; a route without one cannot be shipped.
        raise SystemExit(f"no path regular expression for {template!r} ({type(route).__name__})")
    return {"methods": sorted(methods) if methods else None, "path": template, "regex": regex.pattern}


def _flatten(routes: list[Any]) -> list[dict[str, Any]]:
    """FastAPI >= 0.16x keeps included routers lazy (``_IncludedRouter``); older releases list plain routes."""
    from starlette.routing import Mount, WebSocketRoute

    out: list[dict[str, Any]] = []
    for route in routes:
        if hasattr(route, "effective_candidates"):
            out.extend(_flatten(list(route.effective_candidates())))
        elif isinstance(route, Mount):
            out.append({"methods": None, "path": route.path + "/{path:path}", "regex": route.path_regex.pattern})
        elif isinstance(route, WebSocketRoute) or type(route).__name__.endswith("WebSocketRoute"):
            continue  # never reached by an HTTP request
        else:
            route_obj = getattr(route, "original_route", route)
            path = getattr(route, "path", "") or getattr(route_obj, "path", "")
            if getattr(route, "path_regex", None) is None and hasattr(route_obj, "path_regex"):
                route = route_obj
            if type(route_obj).__name__.endswith("WebSocketRoute"):
                continue
            out.append(_entry(route, path, getattr(route, "methods", None)))
    return out


def main() -> None:
    from litellm.proxy.proxy_server import app

    try:  # newer releases register feature routers on first use; this is the table once all are in
        from litellm.proxy._lazy_features import register_all_features
    except ImportError:
        pass
    else:
        register_all_features(app)
    router = app.router
    routes = _flatten(list(router.routes))
    low = getattr(router, "_iter_low_priority_routes", None)
    if low is not None:
        routes.extend(_entry(r, getattr(r, "path", ""), getattr(r, "methods", None)) for r in low())
    # One route a line, so a new release's change reads as a diff.
    lines = ",\n".join(json.dumps(route, separators=(",", ":")) for route in routes)
    sys.stdout.write(f'{{"litellm":{json.dumps(version("litellm"))},"routes":[\n{lines}\n]}}\n')


if __name__ == "__main__":
    main()
