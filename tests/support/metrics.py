"""Reading /metrics in tests."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

#: Families that count Redis timeouts, which a loaded machine produces whatever the clients send (their labels
#: are fixed names): left out when a test checks that client input adds no series.
DEPENDENCY_HEALTH = ("gateway_redis_errors", "gateway_breaker_fallbacks")


def client_driven(series) -> set:
    """The (name, labels) series a client's requests could add to, without DEPENDENCY_HEALTH's."""
    return {(name, labels) for name, labels in series if not name.startswith(DEPENDENCY_HEALTH)}


def scrape(gateway) -> dict[tuple[str, tuple], float]:
    """Every sample on a gateway's /metrics: {(name, sorted labels): value}."""
    text = requests.get(gateway.url("/metrics"), timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )
