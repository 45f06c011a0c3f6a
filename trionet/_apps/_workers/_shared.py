"""Shared memory of a fleet of workers: statistics and fleet-wide limits.

One block of memory, mapped by the supervisor and by every worker (a
``memfd`` -- an unlinked temporary file elsewhere -- created by the
supervisor, inherited by each worker as a descriptor and mapped
``MAP_SHARED``), holds ``capacity`` *slots*, one per running worker process.
Everything is native 64-bit integers (but for the targets' labels), in four regions::

    counters   capacity x SLOT_WORDS   [publishes, has proxy, NetStatistics...,
                                        ProxyStatistics...] per slot
    open       capacity                the worker's open connections (throttle.open)
    clients    BUCKETS x capacity      per-client counts, bucket-major: the
                                        slots of one bucket are contiguous
    targets    capacity x TARGET_SLOT_WORDS
                                       a proxy's upstream targets per slot:
                                       [count, (UpstreamStatistics values...,
                                        label bytes) x MAX_TARGETS]

A proxy's targets carry their label (``"host:port"``, UTF-8, NUL-padded to
LABEL_BYTES) in the slot, so the supervisor learns them from the workers and
needs no configuration of its own: it sums each target's figures by label
(the workers of a fleet all run the same target list). A worker writes a
target's label before the count that makes it visible, and never changes it
(the slot is zeroed when claimed). Only the first MAX_TARGETS targets are
published; a label longer than LABEL_BYTES is cut there.

Who writes what. Each worker writes only its own slot -- its counters, its
open count, its column of the client table -- so no two processes ever write
one word, and no lock is needed. Aligned 64-bit stores and loads do not tear
on the platforms trio runs on. The supervisor reads; it writes a slot only
while no process owns it (:meth:`FleetMemory.retire` zeroes it).

Statistics are published, not streamed: a worker copies its counters into its
slot every ``PUBLISH_INTERVAL`` seconds and once more when it stops serving
(``WorkerSlot.publish``; no message or write per I/O call), and the
supervisor adds the slots up when its page is asked. A page is therefore at
most ``PUBLISH_INTERVAL`` behind; a worker killed outright loses what it
counted since its last publish.

Limits are live: a worker's throttle writes its open count and its client
column on every admission and close, and checks the *sum* over all slots
(:class:`SharedThrottle`). Each worker's check and count are one step with
no checkpoint between them, so at most one admission per other worker can be
in flight unseen: a fleet of W workers overshoots ``max_connections`` by at
most W - 1 connections (W - 1 sessions of two slots for a proxy), and the
per-client limit by at most W - 1 per client -- only when admissions race on
different workers at the very limit. The client table hashes each client
(CRC-32 of its address) into BUCKETS buckets: two clients in one bucket share
a count, which can only make the limit stricter for them, never looser.

The slot API, for the supervisor (and for anything that starts workers, such
as a reload starting a new generation while the old one drains):

* ``slot = fleet.claim(worker_id)`` before spawning a process: a free slot,
  zeroed; ``fleet.worker_env(slot)`` and ``fleet.fd`` go to the process
  (environment and ``pass_fds``).
* ``fleet.retire(slot)`` once that process has exited (reaped): its last
  counters fold into the fleet's retired totals, so the totals never go
  down, its gauges and its open/per-client counts drop out (its connections
  are gone), and the slot is free for a fresh process. Never retire a slot
  whose process may still run: it would keep counting into a slot another
  process gets.
* ``fleet.readings()`` for the page: totals (retired + live slots for
  counters, live slots only for gauges) and per-worker-id values.

``WorkerSupervisor`` keeps its ``FleetMemory`` in ``_fleet`` (created in
``run``); ``_run_one`` claims a slot around each process it spawns and
retires it once the process is reaped. The worker side reads its slot from
the environment (``WorkerSlot.from_environ``) and ``WorkerContext.serve``
does the rest (``_fleet``).

Capacity: :func:`fleet_capacity` leaves room for two generations of workers
at once plus restarts in flight; ``claim`` raises when every slot is taken.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import zlib
from collections.abc import MutableMapping
from dataclasses import fields
from typing import Final, final

from ..._base._addr import Network, client_key
from ..._core._stats import NET_STATISTICS, NetStatistics, Reading, Statistic
from ..._core._throttle import Throttle
from .._tcp_proxy import PROXY_STATISTICS, ProxyStatistics
from .._upstreams import UPSTREAM_LABEL, UPSTREAM_STATISTICS, UpstreamStatistics

__all__ = [
    "BUCKETS",
    "FLEET_ENV",
    "LABEL_BYTES",
    "MAX_TARGETS",
    "PUBLISH_INTERVAL",
    "FleetMemory",
    "SharedThrottle",
    "WorkerSlot",
    "fleet_capacity",
]

FLEET_ENV: Final = "TRIONET_FLEET"  # "fd,capacity,slot" in a worker's environment
PUBLISH_INTERVAL: Final = 0.1
BUCKETS: Final = 4096
WORD: Final = 8

_NET: Final = [f.name for f in fields(NetStatistics)]
_PROXY: Final = list(PROXY_STATISTICS)  # the counters (not the per-target tuple)
_STATS: Final[list[Statistic]] = [NET_STATISTICS[n] for n in _NET] + [
    PROXY_STATISTICS[n] for n in _PROXY
]
_PUBLISHES: Final = 0  # header word: how many times the slot was published
_HAS_PROXY: Final = 1  # header word: 1 when the worker runs a TcpProxy
_HEADER: Final = 2
SLOT_WORDS: Final = _HEADER + len(_STATS)
# A proxy's targets: sessions, failures, open, down, downs and the label.
MAX_TARGETS: Final = 16
LABEL_BYTES: Final = 320  # a 253-byte host name, brackets and a port fit
_TARGET: Final = list(UPSTREAM_STATISTICS)
_TARGET_STATS: Final[list[Statistic]] = [UPSTREAM_STATISTICS[n] for n in _TARGET]
_TARGET_WORDS: Final = len(_TARGET) + LABEL_BYTES // WORD
TARGET_SLOT_WORDS: Final = 1 + MAX_TARGETS * _TARGET_WORDS


def fleet_capacity(workers: int) -> int:
    """Slots for ``workers`` workers: three generations (the serving one, a
    reload's new one, one still draining) and restarts in flight; past that a
    new worker waits for a draining one to exit (the supervisor's
    ``_claim_slot``)."""
    return 3 * workers + 2


def _size(capacity: int) -> int:
    return WORD * capacity * (SLOT_WORDS + 1 + BUCKETS + TARGET_SLOT_WORDS)


def bucket_of(host: str) -> int:
    """The client table bucket of ``host`` (the same in every process,
    unlike ``hash()``, which is salted per interpreter)."""
    return zlib.crc32(client_key(host).encode()) % BUCKETS


@final
class _Regions:
    """The four int64 regions of one mapping (the targets' also as bytes,
    for their labels)."""

    def __init__(self, memory: mmap.mmap, capacity: int) -> None:
        self.raw = memoryview(memory)
        words = self.raw.cast("q")
        self.all = words
        counters_end = capacity * SLOT_WORDS
        clients_end = counters_end + capacity + BUCKETS * capacity
        self.counters = words[:counters_end]
        self.open = words[counters_end : counters_end + capacity]
        self.clients = words[counters_end + capacity : clients_end]
        self.targets = words[clients_end:]
        self.target_bytes = self.raw[WORD * clients_end :]

    def release(self) -> None:
        views = (self.counters, self.open, self.clients, self.targets, self.target_bytes)
        for view in (*views, self.all, self.raw):
            view.release()

    def read_targets(self, slot: int) -> list[tuple[str, list[int]]]:
        """The targets published in ``slot``: ``(label, [values...])`` each."""
        base = slot * TARGET_SLOT_WORDS
        found = []
        for j in range(min(self.targets[base], MAX_TARGETS)):
            at = base + 1 + j * _TARGET_WORDS
            start = WORD * (at + len(_TARGET))
            label = bytes(self.target_bytes[start : start + LABEL_BYTES]).rstrip(b"\0")
            values = list(self.targets[at : at + len(_TARGET)])
            found.append((label.decode("utf-8", "replace"), values))
        return found

    def write_targets(self, slot: int, upstreams: tuple[UpstreamStatistics, ...]) -> None:
        """Publish ``upstreams`` in ``slot`` (labels once: they never change)."""
        base = slot * TARGET_SLOT_WORDS
        published = self.targets[base]
        for j, target in enumerate(upstreams[:MAX_TARGETS]):
            at = base + 1 + j * _TARGET_WORDS
            for i, name in enumerate(_TARGET):
                self.targets[at + i] = int(getattr(target, name))
            if j >= published:
                start = WORD * (at + len(_TARGET))
                label = target.target.encode()[:LABEL_BYTES].ljust(LABEL_BYTES, b"\0")
                self.target_bytes[start : start + LABEL_BYTES] = label
        self.targets[base] = min(len(upstreams), MAX_TARGETS)


# ----------------------------------------------------------------- supervisor
@final
class FleetMemory:
    """The supervisor's side: creates the block, hands out slots, reads them.

    Args:
      capacity: how many slots (worker processes alive at once), >= 1.

    Raises:
      OSError: the memory could not be created.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"FleetMemory.capacity={capacity!r}: must be at least 1")
        self.capacity: int = capacity
        self._file = _anonymous_file(_size(capacity))
        self._memory = mmap.mmap(self._file.fileno(), _size(capacity))
        self._regions = _Regions(self._memory, capacity)
        self._owner: dict[int, int] = {}  # slot -> worker id
        self._retired = [0] * len(_STATS)
        self._retired_targets: dict[str, list[int]] = {}  # label -> counters
        self._proxy_seen = False

    @property
    def fd(self) -> int:
        """The descriptor a worker inherits (``pass_fds``)."""
        return self._file.fileno()

    def claim(self, worker_id: int) -> int:
        """A free slot for a new process of ``worker_id``, zeroed.

        Raises:
          RuntimeError: every slot is in use.
        """
        for slot in range(self.capacity):
            if slot not in self._owner:
                self._zero(slot)
                self._owner[slot] = worker_id
                return slot
        raise RuntimeError(f"no free statistics slot: {self.capacity} worker processes alive")

    def worker_env(self, slot: int) -> dict[str, str]:
        """The environment entry that tells the process of ``slot`` where it publishes."""
        return {FLEET_ENV: f"{self.fd},{self.capacity},{slot}"}

    def retire(self, slot: int) -> None:
        """Fold the (exited) process's last counters into the totals and free its slot."""
        if self._owner.pop(slot, None) is None:
            return
        base = slot * SLOT_WORDS
        counters = self._regions.counters
        self._proxy_seen |= bool(counters[base + _HAS_PROXY])
        for i, stat in enumerate(_STATS):
            if not stat.gauge:
                self._retired[i] += counters[base + _HEADER + i]
        for label, values in self._regions.read_targets(slot):
            totals = self._retired_targets.setdefault(label, [0] * len(_TARGET))
            for i, stat in enumerate(_TARGET_STATS):
                if not stat.gauge:
                    totals[i] += values[i]
        self._zero(slot)

    def live(self) -> dict[int, int]:
        """slot -> worker id of the slots in use."""
        return dict(self._owner)

    def open_connections(self) -> int:
        """Open connections over the fleet, as the limits count them (live)."""
        return sum(self._regions.open)

    def readings(self) -> list[Reading]:
        """The fleet's statistics: counters summed over live and retired
        processes, gauges over live ones, and per worker id (live); then a
        proxy's per-target figures, summed by target label the same way."""
        counters = self._regions.counters
        live = sorted(self._owner.items(), key=lambda item: item[1])
        proxy = self._proxy_seen or any(counters[s * SLOT_WORDS + _HAS_PROXY] for s, _ in live)
        found: list[Reading] = []
        for i, stat in enumerate(_STATS):
            if i >= len(_NET) and not proxy:
                break
            per_worker: dict[int, int] = {}
            for slot, wid in live:
                value = counters[slot * SLOT_WORDS + _HEADER + i]
                per_worker[wid] = per_worker.get(wid, 0) + value
            total = sum(per_worker.values()) + (0 if stat.gauge else self._retired[i])
            found.append(Reading(stat, total, tuple(per_worker.items())))
        return found + self._target_readings(live) if proxy else found

    def _target_readings(self, live: list[tuple[int, int]]) -> list[Reading]:
        """Per statistic and target label: counters over live and retired
        processes, gauges over live ones (``down``: how many live workers
        have the target marked down), and per worker id."""
        retired = self._retired_targets
        # label -> worker id -> values, labels in the order first seen.
        per_label: dict[str, dict[int, list[int]]] = {label: {} for label in retired}
        for slot, wid in live:
            for label, values in self._regions.read_targets(slot):
                mine = per_label.setdefault(label, {}).setdefault(wid, [0] * len(_TARGET))
                for i, value in enumerate(values):
                    mine[i] += value
        found: list[Reading] = []
        for i, stat in enumerate(_TARGET_STATS):
            for label, workers in per_label.items():
                per_worker = tuple((wid, values[i]) for wid, values in workers.items())
                total = sum(v for _, v in per_worker)
                if not stat.gauge and label in retired:
                    total += retired[label][i]
                labels = ((UPSTREAM_LABEL, label),)
                found.append(Reading(stat, total, per_worker, labels=labels))
        return found

    def close(self) -> None:
        """Unmap and close (the workers' own mappings stay valid)."""
        self._regions.release()
        self._memory.close()
        self._file.close()

    def _zero(self, slot: int) -> None:
        regions = self._regions
        base = slot * SLOT_WORDS
        regions.counters[base : base + SLOT_WORDS] = memoryview(bytes(WORD * SLOT_WORDS)).cast("q")
        at = slot * TARGET_SLOT_WORDS
        blank = memoryview(bytes(WORD * TARGET_SLOT_WORDS)).cast("q")
        regions.targets[at : at + TARGET_SLOT_WORDS] = blank
        regions.open[slot] = 0
        clients = regions.clients
        for index in range(slot, BUCKETS * self.capacity, self.capacity):
            clients[index] = 0


def _anonymous_file(size: int) -> _File:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("trionet-fleet")
    else:  # an unlinked temporary file: the same, with a name for a moment
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return _File(fd)


@final
class _File:
    """An owned descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


# --------------------------------------------------------------------- worker
@final
class WorkerSlot:
    """A worker's side: its slot, where it publishes and counts.

    Args:
      fd / capacity / slot: as :meth:`FleetMemory.worker_env` wrote them.
    """

    def __init__(self, fd: int, capacity: int, slot: int) -> None:
        if not 0 <= slot < capacity:
            raise ValueError(f"{FLEET_ENV}: slot {slot} outside 0..{capacity - 1}")
        self.capacity: int = capacity
        self.slot: int = slot
        self._memory = mmap.mmap(fd, _size(capacity))
        self._regions = _Regions(self._memory, capacity)
        self._base = slot * SLOT_WORDS

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> WorkerSlot | None:
        """The slot named in ``environ`` (removed from it), or ``None`` when
        there is none (a worker started without a fleet).

        Raises:
          ValueError: the entry is malformed.
        """
        value = environ.pop(FLEET_ENV, None)
        if value is None:
            return None
        try:
            fd, capacity, slot = (int(part) for part in value.split(","))
        except ValueError:
            raise ValueError(f"{FLEET_ENV}={value!r}: expected FD,CAPACITY,SLOT") from None
        try:
            return cls(fd, capacity, slot)
        finally:
            os.close(fd)  # the mapping keeps what it needs

    def publish(self, stats: NetStatistics, proxy: ProxyStatistics | None = None) -> None:
        """Copy the worker's statistics into its slot."""
        counters = self._regions.counters
        at = self._base + _HEADER
        for i, name in enumerate(_NET):
            counters[at + i] = getattr(stats, name)
        if proxy is not None:
            at += len(_NET)
            for i, name in enumerate(_PROXY):
                counters[at + i] = getattr(proxy, name)
            self._regions.write_targets(self.slot, proxy.upstreams)
            counters[self._base + _HAS_PROXY] = 1
        counters[self._base + _PUBLISHES] += 1

    def throttle(self, base: Throttle, exempt: tuple[Network, ...]) -> SharedThrottle:
        """A :class:`SharedThrottle` with ``base``'s limits, counting here."""
        return SharedThrottle(self, base.max_connections, base.per_client_max, exempt)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._regions.release()
            self._memory.close()


@final
class SharedThrottle(Throttle):
    """A :class:`Throttle` whose limits apply to the whole fleet.

    It keeps the worker's own counts as a ``Throttle`` does, and also writes
    them to the worker's slot; its checks compare the sum over every slot
    with the limits. See the module notes for the overshoot bound.
    """

    __slots__ = ("_buckets", "_clients", "_opens", "_slot", "_stride")

    def __init__(
        self,
        slot: WorkerSlot,
        max_connections: int | None,
        per_client_max: int | None,
        exempt: tuple[Network, ...],
    ) -> None:
        super().__init__(max_connections, per_client_max, exempt)
        self._slot = slot.slot
        self._stride = slot.capacity
        regions = slot._regions
        self._opens = regions.open
        self._clients = regions.clients
        # host -> index of its bucket's first slot, or -1 for an exempt
        # client (not counted in the shared table); bounded like the exempt cache.
        self._buckets: dict[str, int] = {}

    def _bucket(self, host: str) -> int:
        start = self._buckets.get(host)
        if start is None:
            start = -1 if self._is_exempt(host) else bucket_of(host) * self._stride
            if len(self._buckets) > 4096:
                self._buckets.clear()
            self._buckets[host] = start
        return start

    def at_limit(self, need: int = 1) -> bool:
        limit = self.max_connections
        return limit is not None and sum(self._opens) + need > limit

    def client_at_limit(self, host: str) -> bool:
        limit = self.per_client_max
        if limit is None:
            return False
        start = self._bucket(host)
        return start >= 0 and sum(self._clients[start : start + self._stride]) >= limit

    def acquire(self, host: str | None) -> None:
        super().acquire(host)
        self._opens[self._slot] = self.open

    def count_client(self, host: str) -> None:
        super().count_client(host)
        if self.per_client_max is not None and (start := self._bucket(host)) >= 0:
            self._clients[start + self._slot] += 1

    def release(self, host: str | None) -> None:
        super().release(host)
        self._opens[self._slot] = self.open
        if host is None or self.per_client_max is None:
            return
        if (start := self._bucket(host)) >= 0:
            self._clients[start + self._slot] -= 1
