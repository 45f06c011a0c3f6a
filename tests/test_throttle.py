"""The I/O-free throttle accounting, table-driven."""

from __future__ import annotations

import ipaddress

from trionet._core._throttle import Throttle


def test_global_limit() -> None:
    t = Throttle(max_connections=2)
    assert not t.at_limit()
    t.acquire("1.1.1.1")
    t.acquire(None)
    assert t.at_limit() and t.open == 2
    t.release(None)
    assert not t.at_limit() and t.open == 1


def test_no_limit() -> None:
    t = Throttle()
    for _ in range(1000):
        t.acquire("1.2.3.4")
    assert not t.at_limit()
    assert not t.client_at_limit("1.2.3.4")
    assert t.per_client == {}  # not tracked without a per-client limit


def test_per_client_limit_and_exempt_networks() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    t = Throttle(per_client_max=2, exempt=nets)
    cases = [
        ("192.0.2.1", 2, True),
        ("192.0.2.2", 1, False),
        ("10.1.2.3", 5, False),  # exempt network
        ("::1", 3, False),  # exempt IPv6
        ("::ffff:10.0.0.1", 3, False),  # IPv4-mapped address in an exempt v4 network
        ("2001:db8::1", 2, True),
    ]
    for host, count, limited in cases:
        for _ in range(count):
            t.acquire(host)
        assert t.client_at_limit(host) is limited, host


def test_release_drops_empty_client_entries() -> None:
    t = Throttle(per_client_max=3)
    t.acquire("192.0.2.1")
    t.acquire("192.0.2.1")
    t.release("192.0.2.1")
    assert t.per_client == {"192.0.2.1": 1}
    t.release("192.0.2.1")
    assert t.per_client == {} and t.open == 0
