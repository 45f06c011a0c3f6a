"""Shared plumbing for the benchmark echo servers (kept out of the echo loops)."""

from __future__ import annotations

import argparse
import resource
import sys

RECEIVE_SIZE = 65536  # every server reads up to this many bytes per call
BACKLOG = 1024  # every server listens with this backlog (trionet's default)


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def parse_args(
    description: str, extra: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """``--host`` / ``--port`` (0 = ephemeral) plus any options of ``extra``."""
    p = argparse.ArgumentParser(description=description, parents=[extra] if extra else [])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = ephemeral (the bound port is printed)")
    return p.parse_args()


def announce(port: int) -> None:
    """Tell the harness where we listen: one line ``PORT <n>`` on stdout."""
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
