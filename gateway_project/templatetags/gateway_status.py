"""Formatting for the status page: shares, latencies, rates, with a dash for what is not known yet."""

from __future__ import annotations

from django import template

register = template.Library()
DASH = "\N{EN DASH}"


@register.filter
def percent(value) -> str:
    if value is None:
        return DASH
    return "0 %" if value == 0 else f"{value * 100:.1f} %"


@register.filter
def ms(value) -> str:
    if value is None:
        return DASH
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@register.filter
def per_second(value) -> str:
    if value is None:
        return DASH
    return f"{value:.2f}/s" if value < 10 else f"{value:.0f}/s"


@register.filter
def count(value) -> str:
    if value is None:
        return DASH
    return f"{value:.0f}"


@register.filter
def check_class(value: str) -> str:
    return "bad" if value.startswith("error") else "good"
