"""trionet's benchmark harness: echo servers, a C load generator, an interleaved runner.

``python -m bench --quick`` is the smoke run; ``bench/README.md`` documents the full
run, the load generator's command line and API, and how to read the results.
"""
