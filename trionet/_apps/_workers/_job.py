"""The hand-over from the supervisor to a worker process: what the worker runs
(``main``, found again by name in a fresh interpreter), its job, and the
command that starts it.

A worker is started with ``python -P <path of _boot.py>``: the boot module
is a real module of this package, run by path rather than with ``-m``
because ``-m`` imports the ``trionet`` package (about half a second) before
its first line runs, and those first lines must set the worker's signal
dispositions at once (see ``_boot``). ``-P`` keeps the script's directory off
``sys.path``. The job travels pickled in one environment variable, read and
removed by the worker before anything else; the supervisor's ``sys.path``
travels beside it so that ``main``'s module is found as the supervisor found it.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import importlib.util
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ..._base._options import AcceptOptions

if TYPE_CHECKING:
    from ._runtime import WorkerContext

__all__ = [
    "DUMP_SIGNAL",
    "ERROR",
    "HEARTBEAT",
    "MAX_MESSAGE",
    "READY",
    "Job",
    "WorkerMain",
    "boot_command",
    "decode_job",
    "encode_job",
    "locate_main",
    "resolve_main",
]

WorkerMain: TypeAlias = Callable[["WorkerContext"], Awaitable[object]]
# Exported and described as trionet.WorkerMain.

PAYLOAD_ENV: Final = "TRIONET_WORKER"
PATH_ENV: Final = "TRIONET_WORKER_PATH"
# The control socket carries newline-terminated messages from worker to
# supervisor: "R" (serving), "E<one line>" (the error a start-up failed with),
# "H<open connections>" (the heartbeat of the worker's trio loop); and, after
# the supervisor sent DUMP_SIGNAL to a hung worker, faulthandler's dump of its
# stacks, which the supervisor logs.
READY: Final = b"R\n"
ERROR: Final = b"E"
HEARTBEAT: Final = b"H"
DUMP_SIGNAL: Final = signal.SIGUSR1
MAX_MESSAGE: Final = 2048
_BOOT: Final = Path(__file__).with_name("_boot.py")


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a worker process needs (see :func:`encode_job`)."""

    main_module: str
    main_qualname: str
    main_path: str | None
    worker_id: int
    workers: int
    restarts: int
    listen: tuple[AcceptOptions, ...]
    grace: float
    control_fd: int
    generation: int = 0
    heartbeat: float = 5.0  # seconds between heartbeats


def encode_job(job: Job, environ: MutableMapping[str, str]) -> None:
    """Put ``job`` and this process's ``sys.path`` into ``environ`` (the
    worker's environment)."""
    environ[PAYLOAD_ENV] = base64.b64encode(pickle.dumps(job)).decode("ascii")
    environ[PATH_ENV] = os.pathsep.join(p for p in sys.path if p)


def decode_job(environ: MutableMapping[str, str]) -> Job:
    """The job ``encode_job`` put into ``environ``, removed from it (child
    processes of the worker must not see it)."""
    job: Job = pickle.loads(base64.b64decode(environ.pop(PAYLOAD_ENV)))
    return job


def boot_command() -> list[str]:
    """The worker's command line: this interpreter, its flags, the boot module."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-P", str(_BOOT)]


def resolve_main(module_name: str, qualname: str, path: str | None) -> WorkerMain:
    if path is not None:
        # main lives in the script the supervisor ran: load it under another
        # name, as multiprocessing does, so its `if __name__ == "__main__"` block
        # (which calls run_workers) does not run again.
        spec = importlib.util.spec_from_file_location("__mp_main__", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the worker's main script {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["__mp_main__"] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def locate_main(main: WorkerMain) -> tuple[str, str, str | None]:
    """How a fresh interpreter finds ``main``: (module, qualname, script path)."""
    module = getattr(main, "__module__", None)
    qualname = getattr(main, "__qualname__", None)
    if not callable(main) or not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"main={main!r}: expected an async function defined in a module")
    if "<" in qualname:  # <lambda>, <locals>
        raise ValueError(
            f"main={main!r}: a worker process must import it by name; "
            "define it at module level (not a lambda or a nested function)"
        )
    path: str | None = None
    if module == "__main__":
        main_mod = sys.modules["__main__"]
        spec = getattr(main_mod, "__spec__", None)
        if spec is not None and spec.name not in (None, "__main__"):
            module = spec.name  # python -m package.module
        else:
            path = getattr(main_mod, "__file__", None)
            if path is None:
                raise ValueError(f"main={main!r} lives in an interactive session; put it in a file")
            path = os.path.abspath(path)
    return module, qualname, path
