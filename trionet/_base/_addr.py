"""Addresses in text: ``host:port`` for messages, IP literals, and one client,
one identity (the IPv4-mapped form of an IPv4 client is the IPv4 client).

Every module that prints a ``host:port``, asks "is this an IP literal", or
matches a client address against networks goes through here, so the rules are
written once.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["IPAddress", "host_port", "in_networks", "is_ip", "parse_address", "strip_brackets"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_port(host: str, port: object) -> str:
    """``host:port`` for messages, with IPv6 literals bracketed (``[::1]:80``);
    a host already in brackets is left as it is."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def strip_brackets(host: str) -> str:
    """``[::1]`` -> ``::1``; anything else unchanged."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 literal (a scope id allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address, an IPv4-mapped IPv6 address turned into its
    IPv4 form and a scope id (``fe80::1%eth0``) dropped; ``None`` if ``host``
    is not an IP address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(host: str, networks: tuple[Any, ...]) -> bool:
    """Is ``host`` (an address as the kernel or a PROXY header prints it) in
    one of ``networks``? A ``host`` that is not an IP address is in none."""
    addr = parse_address(host)
    return addr is not None and any(addr in net for net in networks)
