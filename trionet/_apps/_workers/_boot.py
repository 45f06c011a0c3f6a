"""The first code a worker process runs (``python -P <this file>``, see ``_job``).

Its first lines set the signal dispositions, before anything is imported: SIGINT
is ignored (a terminal's Ctrl-C reaches every process of the group; the
supervisor turns it into one SIGTERM per worker), so is SIGHUP (a terminal's
hang-up or ``kill -HUP -PGID`` reaches them too; reloading is the supervisor's
business, and SIGHUP's default action would kill the worker), and a SIGTERM
arriving before trio takes over is remembered, not fatal. Then the
supervisor's ``sys.path`` is restored and the worker's runtime takes over.
"""

import os
import signal
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _early: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: _early.append(1))
    _path = os.environ.pop("TRIONET_WORKER_PATH", "")
    sys.path[:0] = [p for p in _path.split(os.pathsep) if p]
    from trionet._apps._workers._runtime import worker_entry

    worker_entry(_early)
