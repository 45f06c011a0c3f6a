"""Option validation: every bad value is refused where it is written, naming field and value."""

from __future__ import annotations

import socket

import pytest

import trionet
from trionet import AcceptOptions, ConnectOptions, SocketOptions

BAD = [
    (SocketOptions, {"nodelay": 1}, "SocketOptions.nodelay=1"),
    (SocketOptions, {"linger": -1}, "SocketOptions.linger=-1"),
    (SocketOptions, {"recv_bufsize": 0}, "SocketOptions.recv_bufsize=0"),
    (SocketOptions, {"send_bufsize": -5}, "SocketOptions.send_bufsize=-5"),
    (SocketOptions, {"tos": 256}, "SocketOptions.tos=256"),
    (SocketOptions, {"mark": -1}, "SocketOptions.mark=-1"),
    (SocketOptions, {"notsent_lowat": "x"}, "SocketOptions.notsent_lowat='x'"),
    (AcceptOptions, {"port": 65536}, "AcceptOptions.port=65536"),
    (AcceptOptions, {"port": -1}, "AcceptOptions.port=-1"),
    (AcceptOptions, {"port": "80"}, "AcceptOptions.port='80'"),
    (AcceptOptions, {"family": socket.AF_UNIX}, "AcceptOptions.family="),
    (AcceptOptions, {"backlog": 0}, "AcceptOptions.backlog=0"),
    (AcceptOptions, {"defer_accept": -1.0}, "AcceptOptions.defer_accept=-1.0"),
    (AcceptOptions, {"inactivity_timeout": -2}, "AcceptOptions.inactivity_timeout=-2"),
    (AcceptOptions, {"active_timeout": float("nan")}, "AcceptOptions.active_timeout=nan"),
    (AcceptOptions, {"localhost_only": True, "host": "0.0.0.0"}, "AcceptOptions.host='0.0.0.0'"),
    (AcceptOptions, {"tls_handshake_timeout": 0}, "AcceptOptions.tls_handshake_timeout=0"),
    (AcceptOptions, {"proxy_protocol_trusted": ["nonsense"]}, "'nonsense'"),
    (AcceptOptions, {"proxy_protocol_trusted": "10.0.0.0/8"}, "not a single string"),
    (AcceptOptions, {"socket": {"nodelay": True}}, "AcceptOptions.socket="),
    (AcceptOptions, {"fd": -3}, "AcceptOptions.fd=-3"),
    (ConnectOptions, {"connect_timeout": 0}, "ConnectOptions.connect_timeout=0"),
    (ConnectOptions, {"connect_timeout": -1}, "ConnectOptions.connect_timeout=-1"),
    (ConnectOptions, {"local_address": "not-an-ip"}, "ConnectOptions.local_address='not-an-ip'"),
    (ConnectOptions, {"local_port": 70000}, "ConnectOptions.local_port=70000"),
    (ConnectOptions, {"happy_eyeballs_delay": -0.1}, "ConnectOptions.happy_eyeballs_delay=-0.1"),
    (ConnectOptions, {"alpn_protocols": "h2"}, "ConnectOptions.alpn_protocols='h2'"),
    (ConnectOptions, {"resolver": object()}, "ConnectOptions.resolver="),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD)
def test_bad_values_name_field_and_value(
    cls: type, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert message in str(info.value)


def test_defaults() -> None:
    s = SocketOptions()
    assert (s.nodelay, s.keepalive, s.linger) == (True, False, None)
    a = AcceptOptions()
    assert (a.port, a.host, a.backlog, a.tls_handshake_timeout) == (0, None, 1024, 10.0)
    c = ConnectOptions()
    assert (c.connect_timeout, c.happy_eyeballs_delay) == (30.0, 0.25)
    assert ConnectOptions(connect_timeout=None).connect_timeout is None


def test_options_are_frozen() -> None:
    opts = AcceptOptions(port=80)
    with pytest.raises(AttributeError):
        opts.port = 81  # type: ignore[misc]


def test_trusted_networks_are_parsed() -> None:
    opts = AcceptOptions(proxy_protocol_trusted=["10.0.0.0/8", "::1"])
    assert [str(n) for n in opts.proxy_protocol_trusted] == ["10.0.0.0/8", "::1/128"]


def test_coerce() -> None:
    assert AcceptOptions.coerce(8080) == AcceptOptions(port=8080)
    opts = AcceptOptions(port=1)
    assert AcceptOptions.coerce(opts) is opts
    with pytest.raises(TypeError, match="'8080'"):
        AcceptOptions.coerce("8080")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_connections": 0}, "NetProcessor.max_connections=0"),
        ({"throttle": "drop"}, "NetProcessor.throttle='drop'"),
        ({"per_client_max_connections": -1}, "NetProcessor.per_client_max_connections=-1"),
        ({"per_client_exempt": ["300.1.1.1"]}, "'300.1.1.1'"),
        ({"accept_batch": 0}, "NetProcessor.accept_batch=0"),
        ({"default_inactivity_timeout": -1}, "NetProcessor.default_inactivity_timeout=-1"),
        ({"max_idle_connections": -1}, "NetProcessor.max_idle_connections=-1"),
    ],
)
def test_processor_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        trionet.NetProcessor(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
