"""Listening sockets inherited from systemd (socket activation) or a parent process.

systemd's protocol (``sd_listen_fds(3)``): the service manager opens the
sockets, forks, moves them to file descriptors 3, 4, ... in the child and sets

* ``LISTEN_FDS``     -- how many descriptors were passed, starting at fd 3;
* ``LISTEN_PID``     -- the pid they are meant for (the exec'd child itself):
  a process that merely inherited the environment must not take them;
* ``LISTEN_FDNAMES`` -- optional, colon-separated names (``FileDescriptorName=``
  of the ``.socket`` unit), one per descriptor.

:func:`inherited_listeners` reads these the way ``sd_listen_fds_with_names(1)``
does and turns each descriptor into an :class:`AcceptOptions` with ``fd=`` set,
ready for ``NetProcessor.serve``. Parsing the variables is kept apart from the
file descriptors (:func:`parse_listen_environment`) so every rule of the
protocol is tested without touching fd 3 of the test process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, final

from .._base._options import AcceptOptions
from ._listen import check_listening_fd

__all__ = ["LISTEN_FDS_START", "InheritedListeners", "inherited_listeners"]

logger = logging.getLogger("trionet.inherit")

LISTEN_FDS_START: Final = 3  # SD_LISTEN_FDS_START
_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_UNNAMED: Final = "unknown"  # the name sd_listen_fds_with_names gives unnamed fds


@final
class InheritedListeners(list[AcceptOptions]):
    """The inherited listening sockets, in fd order, as :class:`AcceptOptions`.

    A plain list (``await net.serve(handler, *listeners)`` serves them all)
    that also knows each socket's systemd name.

    Attributes:
      names: the name of each entry, in order (``"unknown"`` when
        ``LISTEN_FDNAMES`` was not set, as systemd reports it).
    """

    def __init__(self, items: Iterable[tuple[str, AcceptOptions]] = ()) -> None:
        pairs = list(items)
        super().__init__(opts for _, opts in pairs)
        self.names: tuple[str, ...] = tuple(name for name, _ in pairs)

    def named(self, name: str) -> list[AcceptOptions]:
        """The entries called ``name`` (systemd allows several sockets to share one).

        Raises:
          KeyError: no inherited socket has that name.
        """
        found = [opts for n, opts in zip(self.names, self, strict=True) if n == name]
        if not found:
            raise KeyError(f"no inherited listening socket named {name!r} (have {self.names})")
        return found

    def by_name(self) -> dict[str, list[AcceptOptions]]:
        """Every entry grouped by name."""
        out: dict[str, list[AcceptOptions]] = {}
        for name, opts in zip(self.names, self, strict=True):
            out.setdefault(name, []).append(opts)
        return out


def parse_listen_environment(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The ``(fd, name)`` pairs the environment hands to process ``pid``; I/O-free.

    Follows ``sd_listen_fds_with_names``: no ``LISTEN_PID`` or no ``LISTEN_FDS``
    means nothing was passed; a ``LISTEN_PID`` naming another process means
    the variables were inherited by accident and are ignored (logged).

    Raises:
      ValueError: a variable is malformed (not a number, negative, or
        ``LISTEN_FDNAMES`` with a different count than ``LISTEN_FDS``),
        naming the variable and its value.
    """
    raw_pid = environ.get("LISTEN_PID")
    raw_fds = environ.get("LISTEN_FDS")
    if raw_pid is None or raw_fds is None:
        return []
    target = _parse_count("LISTEN_PID", raw_pid, low=1)
    if target != pid:
        logger.warning(
            "ignoring inherited sockets: LISTEN_PID=%d is not this process (pid %d); "
            "the variables were meant for another process",
            target,
            pid,
        )
        return []
    count = _parse_count("LISTEN_FDS", raw_fds, low=0)
    names = _parse_names(environ.get("LISTEN_FDNAMES"), count)
    return [(LISTEN_FDS_START + i, names[i]) for i in range(count)]


def _parse_count(variable: str, raw: str, *, low: int) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):  # rejects signs, inner spaces, empty
        raise ValueError(f"{variable}={raw!r}: expected a decimal number >= {low}")
    value = int(text)
    if value < low:
        raise ValueError(f"{variable}={raw!r}: expected a decimal number >= {low}")
    return value


def _parse_names(raw: str | None, count: int) -> list[str]:
    if raw is None:
        return [_UNNAMED] * count
    names = raw.split(":") if count else []
    if len(names) != count or (count == 0 and raw):
        raise ValueError(
            f"LISTEN_FDNAMES={raw!r}: {len(raw.split(':'))} names for LISTEN_FDS={count} sockets"
        )
    return [name or _UNNAMED for name in names]


def inherited_listeners(
    *,
    unset_environment: bool = True,
    environ: MutableMapping[str, str] | None = None,
    **options: Any,
) -> InheritedListeners:
    """The listening sockets systemd (or any launcher speaking its protocol) passed us.

    ``await net.serve(handler, *trionet.inherited_listeners())`` serves them
    all; ``inherited_listeners().named("http")`` picks one by its
    ``FileDescriptorName=``.

    Args:
      unset_environment: remove ``LISTEN_PID``, ``LISTEN_FDS`` and
        ``LISTEN_FDNAMES`` after reading them (``sd_listen_fds(1)``), so that
        child processes do not see them; calling this function again then
        returns an empty list. Default True.
      environ: the environment to read (default ``os.environ``).
      **options: :class:`AcceptOptions` fields applied to every socket
        (``inactivity_timeout=30``, ``socket=SocketOptions(...)``...). The
        bind-time options ``host``/``port``/``reuse_port``/``transparent``
        and a Unix socket's ``path``/``mode``/``owner``/``group`` are the
        opener's business and cannot be given.

    A Unix socket (``ListenStream=/run/app.sock``) is served like a TCP one;
    its file belongs to whoever created it and is not removed when the
    server closes the socket.

    Returns:
      An :class:`InheritedListeners` (a list of ``AcceptOptions(fd=...)``),
      empty when nothing was passed to this process.

    Resource handling:
      The descriptors are marked close-on-exec (as ``sd_listen_fds`` does) and
      are owned by whoever serves them: the server closes each when it stops.

    Raises:
      ValueError: a malformed variable, or a passed descriptor that is not a
        listening TCP or Unix stream socket (naming the fd and its name); a
        bind-time option in ``options``.
      TypeError: ``options`` names a field AcceptOptions does not have.
    """
    env = os.environ if environ is None else environ
    _check_options(options)
    try:
        pairs = parse_listen_environment(env, os.getpid())
    finally:
        if unset_environment:
            for name in _VARIABLES:
                env.pop(name, None)
    result: list[tuple[str, AcceptOptions]] = []
    for fd, name in pairs:
        try:
            check_listening_fd(fd)
        except ValueError as exc:
            raise ValueError(f"inherited socket {name!r}: {exc}") from exc
        os.set_inheritable(fd, False)
        result.append((name, AcceptOptions(fd=fd, **options)))
    if result:
        logger.info("inherited %d listening socket(s): %s", len(result), _describe(pairs))
    return InheritedListeners(result)


_BIND_TIME: Final = frozenset(
    {"fd", "host", "port", "localhost_only", "reuse_port", "transparent"}
    | {"path", "mode", "owner", "group"}
)


def _check_options(options: Mapping[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(AcceptOptions)}
    for key in options:
        if key not in fields:
            raise TypeError(f"inherited_listeners(): AcceptOptions has no field {key!r}")
        if key in _BIND_TIME:
            raise ValueError(
                f"inherited_listeners({key}={options[key]!r}): the socket is already bound; "
                "bind-time options belong to whoever opened it"
            )


def _describe(pairs: list[tuple[int, str]]) -> str:
    return ", ".join(f"fd {fd} ({name})" for fd, name in pairs)
