"""Example programs, shipped with the package so an installed trionet can run them.

Each is a complete program with command-line options (``--help`` lists them)::

    python -m trionet.examples.echo_server --port 7007
    python -m trionet.examples.echo_client --port 7007 --count 1000
    python -m trionet.examples.tcp_proxy --port 8080 --upstream 127.0.0.1:7007
    python -m trionet.examples.ats_echo_server --port 7008
    python -m trionet.examples.ats_tunnel --port 8081 --upstream 127.0.0.1:7007

``echo_server``, ``echo_client`` and ``tcp_proxy`` use trionet's native API;
``ats_echo_server`` and ``ats_tunnel`` are the same servers written the way
Apache Traffic Server code is written, on :mod:`trionet.iocore`. Read them in
the installed package (``python -c "import trionet.examples as e; print(e.__path__[0])"``)
or in the documentation's examples page.
"""
