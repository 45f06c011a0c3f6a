"""``MIOBuffer`` and ``IOBufferReader``: ATS's single-writer, multi-reader byte
buffer (``I_IOBuffer.h``), reduced to what the VIO contract needs.

ATS chains fixed-size blocks so a reader can hand iovecs to ``readv`` without
copying. Python cannot hand a ``bytearray`` slice to a socket without either
copying it or pinning the array (an exported ``memoryview`` forbids resizing,
which would make ``write`` fail while a send is in flight), so one contiguous
``bytearray`` holds the bytes and readers keep absolute offsets into it. The
consumed prefix is dropped lazily -- once it is both larger than 64 KiB and
more than half the array -- so ``consume`` is O(1) amortised.

Capacity: ``write()`` always takes everything (as ATS's does: it appends
blocks). ``size`` only bounds what the *network* may add: ``write_avail()`` is
``size`` minus what the slowest reader has not consumed, and a NetVConnection
reads at most that much -- this is the backpressure that stops reading.
``water_mark`` is ATS's: ``high_water()`` is true when more than ``water_mark``
bytes are waiting, and a writing VC asks for more data (``WRITE_READY``)
before a write only while it is not.
"""

from __future__ import annotations

from typing import Final, final

from .._base._checks import is_int

__all__ = ["DEFAULT_BUFFER_SIZE", "IOBufferReader", "MIOBuffer"]

# ATS BUFFER_SIZE_INDEX_32K, the size NetVCTest and most of ATS's HTTP code use.
DEFAULT_BUFFER_SIZE: Final = 32768
_COMPACT_AT: Final = 65536


def _check_count(name: str, value: object) -> int:
    if not is_int(value):
        raise TypeError(f"{name}={value!r}: must be an int")
    if value < 0:
        raise ValueError(f"{name}={value!r}: must be >= 0")
    return value


@final
class MIOBuffer:
    """A byte buffer with one writer and any number of readers (ATS ``MIOBuffer``).

    Args:
      size: bytes the network may buffer here before reading stops (ATS's
        block size index); >= 1.
      water_mark: ``high_water()`` threshold in bytes (ATS ``water_mark``).

    Raises:
      TypeError: ``size`` or ``water_mark`` is not an int.
      ValueError: ``size`` is below 1 or ``water_mark`` below 0.
    """

    __slots__ = ("_base", "_data", "_readers", "size", "water_mark")

    def __init__(self, size: int = DEFAULT_BUFFER_SIZE, water_mark: int = 0) -> None:
        if _check_count("size", size) < 1:
            raise ValueError(f"size={size!r}: must be >= 1")
        self.size: int = size
        self.water_mark: int = _check_count("water_mark", water_mark)
        self._data = bytearray()
        self._base = 0  # absolute offset of _data[0]
        self._readers: list[IOBufferReader] = []

    def __repr__(self) -> str:
        return f"<MIOBuffer size={self.size} buffered={self.max_read_avail()}>"

    @property
    def _end(self) -> int:
        return self._base + len(self._data)

    def alloc_reader(self) -> IOBufferReader:
        """A new reader at the oldest byte still held: everything written so far
        if this is the first reader, else where the slowest reader is."""
        start = min((r._pos for r in self._readers), default=self._base)
        reader = IOBufferReader(self, start)
        self._readers.append(reader)
        return reader

    def dealloc_reader(self, reader: IOBufferReader) -> None:
        """Forget ``reader``; its unconsumed bytes no longer hold space."""
        if reader in self._readers:
            self._readers.remove(reader)
            reader._mbuf = None
            self._trim()

    def dealloc_all_readers(self) -> None:
        for reader in list(self._readers):
            self.dealloc_reader(reader)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (copied); returns its length."""
        n = len(data)
        if n:
            self._data += data
        return n

    def max_read_avail(self) -> int:
        """Bytes the slowest reader has not consumed (0 without readers)."""
        if not self._readers:
            return 0
        return self._end - min(r._pos for r in self._readers)

    def write_avail(self) -> int:
        """Bytes the network may still add before the buffer counts as full."""
        return max(0, self.size - self.max_read_avail())

    def high_water(self) -> bool:
        """More than ``water_mark`` bytes are waiting (ATS ``high_water``)."""
        return self.max_read_avail() > self.water_mark

    def _trim(self) -> None:
        low = min((r._pos for r in self._readers), default=self._end)
        drop = low - self._base
        if (drop >= _COMPACT_AT and drop * 2 >= len(self._data)) or drop == len(self._data):
            del self._data[:drop]
            self._base = low


@final
class IOBufferReader:
    """A read position in a :class:`MIOBuffer` (ATS ``IOBufferReader``);
    obtained from :meth:`MIOBuffer.alloc_reader`."""

    __slots__ = ("_mbuf", "_pos")

    def __init__(self, mbuf: MIOBuffer, pos: int) -> None:
        self._mbuf: MIOBuffer | None = mbuf
        self._pos = pos

    def __repr__(self) -> str:
        return f"<IOBufferReader avail={self.read_avail() if self._mbuf else 'detached'}>"

    def allocated(self) -> bool:
        """Whether the reader still belongs to its buffer (ATS ``allocated``):
        false after :meth:`MIOBuffer.dealloc_reader`."""
        return self._mbuf is not None

    @property
    def mbuf(self) -> MIOBuffer:
        """The buffer this reader reads.

        Raises:
          RuntimeError: the reader was deallocated.
        """
        if self._mbuf is None:
            raise RuntimeError("this IOBufferReader was deallocated")
        return self._mbuf

    def read_avail(self) -> int:
        """Bytes ready to read."""
        return self.mbuf._end - self._pos

    def is_read_avail_more_than(self, n: int) -> bool:
        return self.read_avail() > n

    def peek(self, n: int | None = None, offset: int = 0) -> bytes:
        """Up to ``n`` bytes (all by default) starting ``offset`` bytes in,
        without consuming them (ATS ``memcpy``/``copy``)."""
        buf = self.mbuf
        start = self._pos - buf._base + _check_count("offset", offset)
        stop = buf._end - buf._base
        if n is not None:
            stop = min(stop, start + _check_count("n", n))
        return bytes(buf._data[start:stop])

    copy = peek

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front.

        Raises:
          ValueError: fewer than ``n`` bytes are available.
        """
        avail = self.read_avail()
        if _check_count("n", n) > avail:
            raise ValueError(f"n={n}: only {avail} bytes available to consume")
        self._pos += n
        self.mbuf._trim()

    def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all by default), consumed."""
        data = self.peek(n)
        self.consume(len(data))
        return data

    def clone(self) -> IOBufferReader:
        """Another reader at this reader's position."""
        buf = self.mbuf
        reader = IOBufferReader(buf, self._pos)
        buf._readers.append(reader)
        return reader
