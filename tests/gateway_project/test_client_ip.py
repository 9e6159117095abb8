"""Who the client is (gateway_project.client_ip): X-Forwarded-For and -Proto count only from trusted proxies."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from django.conf import settings as django_settings

from gateway_project import client_ip
from gateway_project.client_ip import in_networks, normalize


def identify(environ: dict) -> tuple[str, bool, str]:
    """As the gateway's middleware calls it: with the configured trusted proxies."""
    return client_ip.identify(environ, django_settings.GATEWAY_TRUSTED_PROXIES)


@pytest.fixture
def trusted(settings):
    settings.GATEWAY_TRUSTED_PROXIES = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))
    return settings.GATEWAY_TRUSTED_PROXIES


def environ(peer: str, xff: str | None = None, proto: str | None = None, scheme: str = "http") -> dict:
    env = {"REMOTE_ADDR": peer, "wsgi.url_scheme": scheme}
    if xff is not None:
        env["HTTP_X_FORWARDED_FOR"] = xff
    if proto is not None:
        env["HTTP_X_FORWARDED_PROTO"] = proto
    return env


def test_without_trusted_proxies_the_peer_is_the_client(settings):
    settings.GATEWAY_TRUSTED_PROXIES = ()
    assert identify(environ("10.0.0.1", xff="203.0.113.7", proto="https")) == ("10.0.0.1", False, "http")


def test_untrusted_peer_cannot_change_address_or_scheme(trusted):
    env = environ("198.51.100.20", xff="203.0.113.7, 10.0.0.1", proto="https")
    assert identify(env) == ("198.51.100.20", False, "http")


def test_untrusted_peer_keeps_the_servers_scheme(trusted):
    assert identify(environ("198.51.100.20", proto="http", scheme="https")) == ("198.51.100.20", False, "https")


def test_trusted_peer_without_forwarded_for(trusted):
    assert identify(environ("10.0.0.1")) == ("10.0.0.1", True, "http")
    assert identify(environ("10.0.0.1", xff="")) == ("10.0.0.1", True, "http")


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ("203.0.113.7", "203.0.113.7"),
        # the right-most entry that is not a trusted proxy: what the left says is the client's own claim
        ("198.51.100.1, 203.0.113.7", "203.0.113.7"),
        ("1.1.1.1,2.2.2.2,203.0.113.7", "203.0.113.7"),
        # trusted hops are skipped
        ("203.0.113.7, 10.0.0.5", "203.0.113.7"),
        ("198.51.100.1, 203.0.113.7, 10.1.2.3, 10.0.0.5", "203.0.113.7"),
        ("203.0.113.7, fd00::5", "203.0.113.7"),
        # every entry trusted: nobody says who the client is
        ("10.0.0.3, 10.0.0.2", "unknown"),
        # 'ip:port', as some balancers write it
        ("203.0.113.7:41234", "203.0.113.7"),
        ("198.51.100.1, 203.0.113.7:443, 10.0.0.5:80", "203.0.113.7"),
        # IPv6 entries, bracketed or not, and IPv4-mapped ones
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("2001:DB8:0:0::7", "2001:db8::7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::ffff:10.0.0.5, 10.0.0.6", "unknown"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        # whitespace
        ("   203.0.113.7   ,10.0.0.5 ", "203.0.113.7"),
    ],
)
def test_trusted_peer_takes_the_right_most_untrusted_entry(trusted, xff, client):
    assert identify(environ("10.0.0.1", xff=xff)) == (client, True, "http")


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        # garbage stops the walk before an untrusted address: the client is unknown, never the proxy
        ("garbage", "unknown"),
        ("unknown", "unknown"),
        ("203.0.113.7, garbage", "unknown"),
        ("203.0.113.7, 10.0.0.5, garbage", "unknown"),
        ("garbage, 203.0.113.7", "203.0.113.7"),
        ("garbage, 10.0.0.5", "unknown"),
        ("203.0.113.7, , 10.0.0.5", "unknown"),
        ("203.0.113.7,", "unknown"),
        ("999.0.0.1", "unknown"),
        ("203.0.113.7:x:y", "unknown"),
    ],
)
def test_trusted_peer_with_garbage_in_forwarded_for(trusted, xff, client):
    assert identify(environ("10.0.0.1", xff=xff)) == (client, True, "http")


def test_ipv4_mapped_peer_is_normalized(trusted):
    assert identify(environ("::ffff:10.0.0.1", xff="203.0.113.7")) == ("203.0.113.7", True, "http")
    assert identify(environ("::ffff:198.51.100.20", xff="203.0.113.7")) == ("198.51.100.20", False, "http")


def test_ipv6_peer(trusted):
    assert identify(environ("fd00::1", xff="2001:db8::7", proto="https")) == ("2001:db8::7", True, "https")
    assert identify(environ("2001:db8::9", xff="203.0.113.7", proto="https")) == ("2001:db8::9", False, "http")


@pytest.mark.parametrize(
    ("proto", "scheme", "expected"),
    [
        ("https", "http", "https"),
        ("HTTPS", "http", "https"),
        (" https ", "http", "https"),
        ("http", "https", "http"),
        ("", "https", "https"),
        ("ftp", "http", "http"),
        ("https, http", "http", "http"),
        ("wss", "https", "https"),
    ],
)
def test_scheme_from_forwarded_proto_only_when_trusted(trusted, proto, scheme, expected):
    assert identify(environ("10.0.0.1", proto=proto, scheme=scheme))[2] == expected
    assert identify(environ("198.51.100.20", proto=proto, scheme=scheme))[2] == scheme


def test_missing_remote_addr(trusted):
    assert identify({"HTTP_X_FORWARDED_FOR": "203.0.113.7"}) == ("", False, "http")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::1]", "::1"),
        ("2001:0DB8::0001", "2001:db8::1"),
        ("", ""),
        ("example.com", ""),
        ("203.0.113.7:80", ""),
    ],
)
def test_normalize(address, expected):
    assert normalize(address) == expected


def test_in_networks():
    networks = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
    assert in_networks("10.1.2.3", networks)
    assert in_networks("::ffff:10.1.2.3", networks)
    assert in_networks("2001:db8::1", networks)
    assert not in_networks("11.0.0.1", networks)
    assert not in_networks("2001:db9::1", networks)
    assert not in_networks("not-an-ip", networks)
    assert not in_networks("10.1.2.3", ())
