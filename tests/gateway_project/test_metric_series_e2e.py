"""No client input adds a series to any metric family on /metrics, django-prometheus's included: a flood of
random methods, paths and hosts against every kind of path leaves the set of series as it was."""

from __future__ import annotations

import random
import string
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.config import make_route, make_upstream, serve
from tests.support.metrics import client_driven
from tests.support.rawclient import RawClient

STANDARD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def kinds(rand: random.Random) -> list[str]:
    """One target of every kind the gateway answers differently, with a random part where the kind allows."""
    word = "".join(rand.choices(string.ascii_lowercase + string.digits, k=rand.randint(1, 12)))
    return [
        "/healthz",
        "/metrics",
        f"/healthz/{word}",
        "/admin/",
        "/admin/login/",
        f"/admin/{word}/",
        f"/_gateway/static/{word}.css",
        f"/_gateway/api/{word}",
        f"/_demo/{word}",
        f"/api/{word}?q={word}",
        f"/{word}/{word}",
        f"/api/%2e%2e/{word}",
    ]


def call(port: int, method: str, target: str, host: str) -> int:
    with RawClient(port) as client:
        body = "Content-Length: 0\r\n" if method not in ("GET", "HEAD", "TRACE") else ""
        client.send(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{body}\r\n".encode())
        return client.read_response(method).status


# /readyz is left out of the flood: its status is Redis's health, not the client's doing (tests/support/metrics.py).


def series(gateway) -> set[tuple[str, tuple]]:
    with RawClient(gateway.port) as client:
        client.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        text = client.read_response().body.decode()
    return client_driven(
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


@pytest.mark.slow
def test_a_flood_of_random_methods_paths_and_hosts_adds_no_series(live, upstream):
    make_route("api", "/api", make_upstream("backend", upstream.url, max_retries=0))
    serve(live)
    rand = random.Random(9)
    # Every kind of answer once per standard method and one unknown method, from two hosts, on every worker.
    warm = [(m, t, h) for m in [*STANDARD, "FOO"] for t in kinds(rand) for h in ("127.0.0.1", "example.com")]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda args: call(live.port, *args), warm * 4))
    before = series(live)
    series(live)  # the first scrape's own latency is observed after it answered

    def random_request(seed: int) -> int:
        r = random.Random(seed)
        method = "".join(r.choices(string.ascii_uppercase, k=r.randint(3, 12)))
        if r.random() < 0.3:
            method = r.choice(STANDARD)
        host = "".join(r.choices(string.ascii_lowercase, k=r.randint(1, 20))) + r.choice([".example", ".test", ""])
        return call(live.port, method, r.choice(kinds(r)), host)

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(random_request, range(3000)))
    after = series(live)
    added = sorted(after - before)
    assert added == [], f"{len(added)} new series after {len(statuses)} random requests, e.g. {added[:5]}"
