"""``python -m trionet``: the ``trionet`` command (see :mod:`trionet._cli`)."""

from ._apps._cli import main

raise SystemExit(main())
