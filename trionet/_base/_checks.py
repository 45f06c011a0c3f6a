"""Argument checks shared by every layer: one copy of each rule.

Each check raises ``ValueError("Owner.name=<repr>: rule")`` -- the field and
the value it refused -- so that a bad value fails where it is written (an
option object's constructor, ``NetProcessor(...)``), not later inside an
accept loop. :func:`is_int` is the one "an int, and not a bool" test for the
places that word their own message.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Iterable
from typing import Final, TypeGuard

__all__ = [
    "Network",
    "bad_value",
    "check_bool",
    "check_family",
    "check_int",
    "check_opt_int",
    "check_seconds",
    "is_int",
    "to_networks",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FAMILIES: Final = {socket.AF_INET, socket.AF_INET6}


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never
    a count or a port to trionet)."""
    return isinstance(value, int) and not isinstance(value, bool)


def bad_value(owner: str, name: str, value: object, why: str) -> ValueError:
    """``ValueError("Owner.name=<repr>: why")``."""
    return ValueError(f"{owner}.{name}={value!r}: {why}")


def check_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    """An int (not a bool) in ``lo..hi`` (``hi=None``: no upper bound)."""
    if not is_int(value):
        raise bad_value(owner, name, value, "must be an int")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise bad_value(owner, name, value, f"must be {bound}")


def check_opt_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    """``None``, or what :func:`check_int` accepts."""
    if value is not None:
        check_int(owner, name, value, lo, hi)


def check_seconds(owner: str, name: str, value: object, *, allow_zero: bool = True) -> None:
    """``None`` (disabled) or a number of seconds >= 0 (> 0 if not allow_zero)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_value(owner, name, value, "must be a number of seconds or None")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise bad_value(owner, name, value, f"must be {rule} seconds (None disables it)")


def check_bool(owner: str, name: str, value: object) -> None:
    """A real bool: ``"no"`` or ``0`` would otherwise be taken by truth value."""
    if not isinstance(value, bool):
        raise bad_value(owner, name, value, "must be True or False")


def check_family(owner: str, value: object) -> None:
    """``None``, ``socket.AF_INET`` or ``socket.AF_INET6``."""
    if value is not None and value not in _FAMILIES:
        raise bad_value(owner, "family", value, "must be socket.AF_INET, socket.AF_INET6 or None")


def to_networks(owner: str, name: str, values: Iterable[object]) -> tuple[Network, ...]:
    """A tuple of networks from ``"10.0.0.0/8"``-style strings or ``ipaddress``
    objects; a single string is refused (it would be taken letter by letter)."""
    if isinstance(values, str | bytes):
        raise bad_value(owner, name, values, "must be a list of networks, not a single string")
    out: list[Network] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise bad_value(owner, name, v, f"not an IP network ({exc})") from None
    return tuple(out)
