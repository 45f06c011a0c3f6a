"""Client addresses as keys and as members of networks: one client, one identity.

A dual-stack listener (``::`` without ``IPV6_V6ONLY``) reports an IPv4 client
as the IPv4-mapped IPv6 address ``::ffff:192.0.2.1``; an IPv4 listener, or a
PROXY protocol header, reports the same client as ``192.0.2.1``. Everything
that counts or matches clients (the per-client limit, its exempt networks, the
networks trusted to send PROXY headers) goes through this module, so both
spellings are one client:

* :func:`client_key` turns an address into the key the per-client limit counts
  under: a mapped address becomes its IPv4 form, anything else stays as is.
* :func:`normalize_networks` rewrites a set of networks so that testing the
  *normalised* address against it gives the same answer as testing the raw
  address against the networks as written: ``::ffff:10.0.0.0/104`` becomes
  ``10.0.0.0/8``, and a network that contains the whole mapped range
  (``::/0``, ``::/80``) also covers every IPv4 address.
* :func:`in_networks` tests an address against networks normalised so.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

__all__ = ["Network", "client_key", "in_networks", "normalize_networks", "parse_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_IPV4: Final = ipaddress.IPv4Network("0.0.0.0/0")


def parse_address(host: str) -> Address | None:
    """``host`` as an IP address with a mapped IPv6 address turned into its
    IPv4 form and a scope id (``fe80::1%eth0``) dropped; ``None`` if ``host``
    is not an IP address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(host: str) -> str:
    """The per-client key of ``host``: an IPv4-mapped IPv6 address in IPv4
    form (``::ffff:127.0.0.1`` -> ``127.0.0.1``), any other text unchanged.

    IPv4 addresses cost one test, other IPv6 addresses two; only text that
    could be a mapped address (every spelling has ``ffff`` in it) is parsed.
    """
    if ":" not in host or "ffff" not in host.lower():
        return host
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:  # a scope id, or not an address at all
        return host
    return host if mapped is None else str(mapped)


def normalize_networks(networks: Iterable[Network]) -> tuple[Network, ...]:
    """``networks`` rewritten for matching normalised addresses (see the module
    docstring): mapped IPv6 networks in IPv4 form, and ``0.0.0.0/0`` added when
    an IPv6 network contains the whole mapped range. Order kept, repeats dropped."""
    out: list[Network] = []
    for net in networks:
        if isinstance(net, ipaddress.IPv6Network):
            if net.subnet_of(_MAPPED):
                net = ipaddress.IPv4Network(
                    (int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96)
                )
            elif net.supernet_of(_MAPPED) and _ALL_IPV4 not in out:
                out.append(_ALL_IPV4)
        if net not in out:
            out.append(net)
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _normalized(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    return normalize_networks(networks)


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    """Is ``host`` (an address as the kernel or a PROXY header prints it) in
    one of ``networks`` (as written by the user; normalised here, cached per
    tuple)? A ``host`` that is not an IP address is in none."""
    addr = parse_address(host)
    if addr is None:
        return False
    return any(addr in net for net in _normalized(networks))
