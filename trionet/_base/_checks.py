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

from ._addr import Network, host_problem

__all__ = [
    "C_INT_MAX",
    "U32_MAX",
    "bad_value",
    "check_bool",
    "check_family",
    "check_host_field",
    "check_instance",
    "check_int",
    "check_opt_int",
    "check_seconds",
    "int_field",
    "is_int",
    "to_networks",
]

_FAMILIES: Final = {socket.AF_INET, socket.AF_INET6}


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never
    a count or a port to trionet)."""
    return isinstance(value, int) and not isinstance(value, bool)


# Kernel integer options are C ints: setsockopt() with a Python int passes one
# (a bigger value fails inside serve()/connect() with a TypeError that names
# nothing), and so does listen()'s backlog and an fd number.
C_INT_MAX: Final = 2**31 - 1
U32_MAX: Final = 2**32 - 1


def bad_value(owner: str, name: str, value: object, why: str) -> ValueError:
    """``ValueError("Owner.name=<repr>: why")``."""
    return ValueError(f"{owner}.{name}={value!r}: {why}")


# One copy of each check below; every field of every option object, and the
# processor's and the proxy's arguments, go through them, so a bad value is
# always refused the same way: ValueError "Owner.field=<repr>: rule".


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


def int_field(
    obj: object, owner: str, name: str, lo: int, hi: int | None = None, *, optional: bool = False
) -> None:
    """Check the int field ``name`` of a frozen option object and store it as
    a plain int: an int subclass (an ``IntEnum``) passes ``_check_int`` but
    ``getaddrinfo()`` refuses it as a port ("Int or String expected")."""
    value = getattr(obj, name)
    if value is None and optional:
        return
    check_int(owner, name, value, lo, hi)
    object.__setattr__(obj, name, int(value))


def check_seconds(
    owner: str,
    name: str,
    value: object,
    *,
    allow_zero: bool = True,
    finite: bool = False,
    hi: float | None = None,
    optional: bool = True,
) -> None:
    """``None`` (disabled) or a number of seconds.

    Args:
      optional: accept ``None``.
      allow_zero: accept 0 (else the value must be > 0).
      finite: refuse ``inf`` (option fields do: ``None`` is how to disable them).
      hi: the largest value accepted (a kernel limit).

    An int too big for a float (``10**400``) is refused here: trio deadlines
    are floats, and the conversion would otherwise fail later with a bare
    ``OverflowError``.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        or_none = " or None" if optional else ""
        raise bad_value(owner, name, value, f"must be a number of seconds{or_none}")
    try:
        seconds = float(value)
    except OverflowError:
        raise bad_value(owner, name, value, "too large for a number of seconds") from None
    rule = ">= 0" if allow_zero else "> 0"
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise bad_value(owner, name, value, f"must be {rule} seconds (None disables it)")
    if finite and math.isinf(seconds):
        raise bad_value(owner, name, value, "must be finite (None disables it)")
    if hi is not None and seconds > hi:
        raise bad_value(owner, name, value, f"must be at most {hi} seconds")


def check_bool(owner: str, name: str, value: object) -> None:
    """A real bool: ``"no"`` or ``0`` would otherwise be taken by truth value."""
    if not isinstance(value, bool):
        raise bad_value(owner, name, value, "must be True or False")


def check_family(owner: str, value: object) -> None:
    """``None``, ``socket.AF_INET`` or ``socket.AF_INET6``."""
    if value is not None and (not isinstance(value, int) or value not in _FAMILIES):
        raise bad_value(owner, "family", value, "must be socket.AF_INET, socket.AF_INET6 or None")


def check_instance(owner: str, name: str, value: object, cls: type, what: str) -> None:
    """``None`` or an instance of ``cls``."""
    if value is not None and not isinstance(value, cls):
        raise bad_value(owner, name, value, f"must be {what} or None")


def check_host_field(owner: str, name: str, value: object) -> None:
    """``None`` or a host name or IP literal (:func:`trionet._base._addr.host_problem`)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise bad_value(owner, name, value, "must be a str (a host name or an IP address) or None")
    why = host_problem(value)
    if why is not None:
        raise bad_value(owner, name, value, f"not a valid host name or address: {why}")


def to_networks(owner: str, name: str, values: object) -> tuple[Network, ...]:
    """A tuple of networks from an iterable of ``"10.0.0.0/8"``-style strings
    or ``ipaddress`` networks/addresses (``ip_network`` would also take an int
    or packed bytes as an address: refused, they are not written networks)."""
    if isinstance(values, str | bytes):
        raise bad_value(owner, name, values, "must be a list of networks, not a single string")
    if not isinstance(values, Iterable):
        raise bad_value(owner, name, values, "must be a list of networks")
    out: list[Network] = []
    for v in values:
        if not isinstance(v, str | Network | ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise bad_value(owner, name, v, "not an IP network (write it as a str, '10.0.0.0/8')")
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError as exc:
            raise bad_value(owner, name, v, f"not an IP network ({exc})") from None
    return tuple(out)
