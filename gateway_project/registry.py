"""Extension points the apps fill in their `AppConfig.ready()`, so that the core and the apps never import
one another's internals.

The configuration parts (`runtime.register`) and file sections (`configfile.register`) have their own
registration functions; what is left lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: `make run`'s demo: after proxy created the demo route, each hook gets it and the actor (for the audit trail),
#: creates what is missing of its app's part of the demo, and returns lines saying what it created.
demo_hooks: list[Callable[[Any, Any], list[str]]] = []


def add(hooks: list, hook) -> None:
    """Append once: `ready()` may run more than once in tests."""
    if hook not in hooks:
        hooks.append(hook)


#: Inline admin classes shown on the upstream's admin page (breakers: the breaker's settings).
upstream_admin_inlines: list[type] = []


#: The management API's endpoints an app contributes: (URL prefix under /_gateway/api/v1/, viewset class).
api_viewsets: list[tuple[str, type]] = []

#: Functions that report the health of each upstream's targets, for pages that show upstreams (the breakers
#: page). Each is called with `upstream_ids=[...]` and returns {upstream id: [objects with as_dict()]}.
upstream_health_providers: list[Callable[..., dict[int, list[Any]]]] = []

#: Functions that report the live breakers, for the status page and the route page. Each is called with
#: `names=[upstream names]` (None: all) and returns dicts: upstream_id, upstream, mode, state, label (words an
#: operator reads: "forced open"), css (closed, open, half-open, forced, disabled, shadow, unknown),
#: consecutive_failures, window_failures, window_calls, next_probe_in, error.
breaker_status_providers: list[Callable[..., list[dict]]] = []

#: Functions that report the busiest rate-limited clients now, for the status page: called with `top=N`, they
#: return dicts: policy, client (as the policy counts it: "ip 10.0.0.1"), used, limit, expires_in.
limited_client_providers: list[Callable[..., list[dict]]] = []

#: Functions that describe, for a route's page, what of their app applies to it: called with `route_id=` and
#: `upstream_name=`, each returns a list of (heading, [lines]) to show.
route_page_providers: list[Callable[..., list[tuple[str, list[str]]]]] = []
