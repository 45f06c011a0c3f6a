"""Hostile values and types for every option field and constructor argument.

Property, per boundary (SocketOptions, AcceptOptions, ConnectOptions,
NetProcessor(...), TcpProxy(...)): a value is either refused on construction
with a TypeError/ValueError whose message names the field and ``repr`` of the
value, or accepted -- and then it works: applied to a real socket it reads
back, a server binds with it on loopback, a connect with it reaches a loopback
listener, a processor with it serves a client. Never a bare OverflowError,
UnicodeError or TypeError from deep inside serve()/connect().

(The iocore shim's timeout setters have their own suite in
tests/test_iocore_timeouts.py.)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import socket
import struct
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import trionet
from trionet import AcceptOptions, ConnectOptions, SocketOptions, UnsupportedOptionError
from trionet._base._sockopt import apply_socket_options
from trionet._inbound._listen import open_listeners
from trionet._processor import table_of

EDGE_INTS = [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63]
EDGE_INTS += [2**70, 10**400, -(10**400)]
EDGE_FLOATS = [0.0, -0.0, 5e-324, 0.001, 1.5, 1e300, 1e308, math.inf, -math.inf, math.nan]
EDGE_STRS = ["", "no", "yes", "True", "0", "h2", "x" * 300, "é", "127.0.0.1", "::1", "10.0.0.0/8"]
EDGE_STRS += ["localhost\x00.example", "fe80::1%nosuchif0"]

ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(EDGE_INTS),
    st.floats(),
    st.sampled_from(EDGE_FLOATS),
    st.text(max_size=12),
    st.sampled_from(EDGE_STRS),
    st.binary(max_size=6),
    st.lists(st.one_of(st.integers(-5, 300), st.sampled_from(EDGE_STRS), st.none()), max_size=3),
    st.just(object()),
    st.sampled_from([socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]),
)
# Values of the right shape, more often in range, so the "then it works" half
# of each property is exercised too.
TYPED = st.one_of(
    st.booleans(),
    st.integers(-2, 70000),
    st.sampled_from(EDGE_INTS),
    st.floats(min_value=0.0, max_value=5.0),
    st.sampled_from(EDGE_FLOATS),
)
VALUES = st.one_of(ANY, TYPED)

# For the network halves: values of the field's own type most of the time
# (else nearly every example is refused and nothing is bound or connected).
PLAUSIBLE = {
    "bool": st.booleans(),
    "int": st.one_of(st.integers(0, 70000), st.sampled_from(EDGE_INTS)),
    "float": st.one_of(st.floats(0.0, 100.0), st.sampled_from(EDGE_FLOATS), st.integers(0, 9)),
    "str": st.sampled_from([*EDGE_STRS, "127.0.0.1", "::1", "h2", "localhost"]),
}


def plausible(annotation: object) -> st.SearchStrategy[Any]:
    """The field's own kind of value (from its annotation), or anything, or None."""
    text = str(annotation)
    kinds = [strategy for kind, strategy in PLAUSIBLE.items() if kind in text]
    if not kinds:
        return VALUES
    own = st.one_of(*kinds)
    # Three times in four the field's own kind (one_of would weigh each of
    # ANY's many branches like this one), else None or anything.
    return st.integers(0, 3).flatmap(lambda i: own if i else st.one_of(st.none(), ANY))


def field_and_value(names_and_types: dict[str, object]) -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(names_and_types)).flatmap(
        lambda name: st.tuples(st.just(name), plausible(names_and_types[name]))
    )


def annotations_of(cls: type) -> dict[str, object]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


SETTINGS = settings(max_examples=300, deadline=None)
NET_SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_named(exc: BaseException, field: str, value: object) -> None:
    """The message names ``Owner.field=`` and the bad value (the whole value,
    or for a list the element at fault)."""
    assert isinstance(exc, TypeError | ValueError), repr(exc)
    assert not isinstance(exc, OverflowError | UnicodeError), repr(exc)
    message = str(exc)
    assert f"{field}=" in message, message
    reprs = [repr(value)]
    if isinstance(value, list | tuple):
        reprs += [repr(v) for v in value]
    assert any(r in message for r in reprs), message


def build(factory: Any, field: str, value: object) -> Any:
    """``factory(**{name: value})``, or the refusal checked and ``None``."""
    owner = getattr(factory, "__name__", str(factory))
    try:
        return factory(**{field.split(".")[-1]: value})
    except (TypeError, ValueError) as exc:
        assert_named(exc, f"{owner}.{field}", value)
        return None


def fields_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ------------------------------------------------------------ SocketOptions
def _read_back(sock: socket.socket, field: str, value: Any) -> None:
    """The applied option, as the kernel reports it."""
    tcp, sol = socket.IPPROTO_TCP, socket.SOL_SOCKET
    if field == "nodelay" and value:
        assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 1
    elif field == "keepalive" and value:
        assert sock.getsockopt(sol, socket.SO_KEEPALIVE) == 1
    elif field == "linger" and value is not None:
        assert struct.unpack("ii", sock.getsockopt(sol, socket.SO_LINGER, 8)) == (1, value)
    elif field in ("recv_bufsize", "send_bufsize") and value is not None:
        name = "rmem_max" if field == "recv_bufsize" else "wmem_max"
        with open(f"/proc/sys/net/core/{name}") as f:
            cap = int(f.read())
        opt = socket.SO_RCVBUF if field == "recv_bufsize" else socket.SO_SNDBUF
        assert sock.getsockopt(sol, opt) >= min(value, cap)  # Linux doubles it
    elif field == "tos" and value is not None:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == value & 0xFC  # ECN bits kept
    elif field == "mark" and value is not None:
        assert struct.unpack("=I", sock.getsockopt(sol, 36, 4))[0] == value
    elif field == "notsent_lowat" and value is not None:
        assert sock.getsockopt(tcp, 25) == value


@SETTINGS
@given(field=st.sampled_from(fields_of(SocketOptions)), value=VALUES)
def test_socket_options(field: str, value: Any) -> None:
    opts = build(SocketOptions, field, value)
    if opts is None:
        return
    with socket.socket() as sock:
        try:
            apply_socket_options(sock, opts)
        except UnsupportedOptionError as exc:  # e.g. SO_MARK without CAP_NET_ADMIN
            assert f"SocketOptions.{field}" in str(exc)
            return
        _read_back(sock, field, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("recv_bufsize", 2**40), ("send_bufsize", 2**31), ("notsent_lowat", 2**31), ("mark", 2**32)],
)
def test_socket_ints_beyond_a_c_int_are_refused(field: str, value: int) -> None:
    """These passed validation and failed inside serve()/connect() with a
    TypeError from setsockopt() that named nothing."""
    with pytest.raises(ValueError, match=rf"SocketOptions\.{field}={value}: must be "):
        SocketOptions(**{field: value})


def test_mark_takes_the_whole_u32_range() -> None:
    """2**32-1 is a valid mark (the kernel's is a u32): it used to fail in
    setsockopt() (a Python int is passed as a signed C int). Applied as 4
    bytes, it reads back; without CAP_NET_ADMIN the refusal names the field."""
    opts = SocketOptions(mark=2**32 - 1)
    with socket.socket() as sock:
        try:
            apply_socket_options(sock, opts)
        except UnsupportedOptionError as exc:
            assert "SocketOptions.mark" in str(exc) and exc.errno == 1  # EPERM
            return
        assert struct.unpack("=I", sock.getsockopt(socket.SOL_SOCKET, 36, 4))[0] == 2**32 - 1


# ------------------------------------------------------------ AcceptOptions
@SETTINGS
@given(field=st.sampled_from(fields_of(AcceptOptions)), value=VALUES)
def test_accept_options_construction(field: str, value: Any) -> None:
    opts = build(AcceptOptions, field, value)
    if opts is not None:
        assert isinstance(opts, AcceptOptions)


def _bindable(opts: AcceptOptions, field: str) -> AcceptOptions | None:
    """``opts`` made to bind on loopback, or None where binding would test
    something else (an arbitrary fd is never adopted; a host name is not looked
    up; a Unix socket path, bound in tests/test_unix.py, is not made in the cwd)."""
    if field in ("fd", "path") or (field == "host" and opts.host not in (None, "127.0.0.1", "::1")):
        return None
    if field in ("localhost_only", "family"):
        return dataclasses.replace(opts, localhost_only=True)
    port = opts.port if field == "port" else 0
    return dataclasses.replace(opts, host=opts.host or "127.0.0.1", port=port)


@NET_SETTINGS
@given(field_and_value(annotations_of(AcceptOptions)))
def test_accept_options_then_bind_on_loopback(case: tuple[str, Any]) -> None:
    field, value = case
    opts = build(AcceptOptions, field, value)
    bindable = None if opts is None else _bindable(opts, field)
    event("refused" if opts is None else "bound" if bindable else "constructed only")
    if bindable is None:
        return

    async def main() -> None:
        try:
            listeners = await open_listeners(bindable)
        except UnsupportedOptionError as exc:
            assert f"AcceptOptions.{field}" in str(exc) or "SocketOptions." in str(exc)
            return
        except OSError as exc:  # a given port already taken (or privileged)
            assert field == "port" and f":{value}" in str(exc), exc
            return
        try:
            assert listeners and all(lst.port > 0 for lst in listeners)
            if field == "defer_accept" and value is not None:
                sock = listeners[0].socket
                got = sock.getsockopt(socket.IPPROTO_TCP, 9)  # TCP_DEFER_ACCEPT
                assert (got > 0) == (value > 0)
        finally:
            for listener in listeners:
                listener.socket.close()

    trio.run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backlog": 2**40}, "AcceptOptions.backlog=1099511627776: must be 1..2147483647"),
        ({"defer_accept": math.inf}, "AcceptOptions.defer_accept=inf: must be finite"),
        ({"defer_accept": 2.0**31}, "AcceptOptions.defer_accept=2147483648.0: must be at most"),
        ({"fd": 2**70}, f"AcceptOptions.fd={2**70}: must be 0..2147483647"),
        ({"inactivity_timeout": 10**400}, "AcceptOptions.inactivity_timeout=1000"),
        ({"tls_handshake_timeout": 10**400}, "too large for a number of seconds"),
        ({"proxy_protocol_timeout": math.inf}, "AcceptOptions.proxy_protocol_timeout=inf"),
        ({"inactivity_timeout": 0}, "AcceptOptions.inactivity_timeout=0: must be > 0"),
        ({"active_timeout": 0.0}, "AcceptOptions.active_timeout=0.0: must be > 0"),
        ({"reuse_port": "no"}, "AcceptOptions.reuse_port='no': must be True or False"),
        ({"family": []}, "AcceptOptions.family=[]"),
        ({"host": 1}, "AcceptOptions.host=1: must be a str"),
        ({"proxy_protocol_trusted": [1]}, "AcceptOptions.proxy_protocol_trusted=1: not an IP"),
        ({"proxy_protocol_trusted": None}, "AcceptOptions.proxy_protocol_trusted=None"),
    ],
)
def test_accept_options_named_cases(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        AcceptOptions(**kwargs)
    assert message in str(info.value)


async def test_accept_options_at_the_kernel_limits_serve() -> None:
    """The largest values accepted really work: a server binds with them and
    serves a client (the kernel caps the backlog and buffers itself)."""
    net = trionet.NetProcessor()
    sock_opts = SocketOptions(recv_bufsize=2**31 - 1, send_bufsize=2**31 - 1)
    opts = AcceptOptions(
        host="127.0.0.1", backlog=2**31 - 1, defer_accept=2**31 - 1, socket=sock_opts
    )

    async def echo(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_some())

    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, echo, opts)
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await client.send_all(b"ping")  # TCP_DEFER_ACCEPT: accepted once data came
        assert await client.receive_some() == b"ping"
        await client.aclose()
        server.shutdown(0)
    assert net.statistics().total_accepts == 1


# ----------------------------------------------------------- ConnectOptions
@SETTINGS
@given(field=st.sampled_from(fields_of(ConnectOptions)), value=VALUES)
def test_connect_options_construction(field: str, value: Any) -> None:
    opts = build(ConnectOptions, field, value)
    if opts is not None:
        assert isinstance(opts, ConnectOptions)


@NET_SETTINGS
@given(field_and_value(annotations_of(ConnectOptions)))
def test_connect_options_then_connect_on_loopback(case: tuple[str, Any]) -> None:
    field, value = case
    opts = build(ConnectOptions, field, value)
    event("refused" if opts is None else "connected")
    if opts is None:
        return

    async def main() -> None:
        net = trionet.NetProcessor()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            try:
                conn = await net.connect("127.0.0.1", port, opts)
            except (trionet.ConnectError, UnsupportedOptionError) as exc:
                # A local address this host does not have, a port in use, a
                # connect timeout of 5e-324 s: an error naming the target.
                assert str(exc).endswith(f"127.0.0.1:{port}") or "SocketOptions." in str(exc)
            except ValueError as exc:  # a family or local address of the other family
                assert f"ConnectOptions.{field}={value!r}" in str(exc), exc
            else:
                try:
                    assert conn.remote_address == ("127.0.0.1", port)
                    if field == "inactivity_timeout" and value is not None and not conn.closed:
                        assert conn.inactivity_timeout == float(value)
                    if field == "local_port" and value:
                        assert conn.local_address[1] == value
                finally:
                    conn.close()
        assert net.statistics().connections_currently_open == 0 and table_of(net).throttle.open == 0

    trio.run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"local_address": 1}, "ConnectOptions.local_address=1: must be an IP address str"),
        ({"local_address": "fe80::1%nosuchif0"}, "unknown interface"),
        ({"local_address": "127.0.0.1\x00x"}, "control character"),
        ({"server_hostname": 5}, "ConnectOptions.server_hostname=5: must be a str"),
        ({"alpn_protocols": ["x" * 256]}, "ConnectOptions.alpn_protocols='xxxx"),
        ({"alpn_protocols": ["é"]}, "ConnectOptions.alpn_protocols='é': each protocol"),
        ({"alpn_protocols": [b"h2"]}, "ConnectOptions.alpn_protocols=b'h2'"),
        ({"alpn_protocols": 5}, "ConnectOptions.alpn_protocols=5"),
        ({"connect_timeout": 10**400}, "too large for a number of seconds"),
        ({"happy_eyeballs_delay": math.inf}, "ConnectOptions.happy_eyeballs_delay=inf"),
        ({"inactivity_timeout": 0}, "ConnectOptions.inactivity_timeout=0: must be > 0"),
        ({"family": "AF_INET"}, "ConnectOptions.family='AF_INET'"),
    ],
)
def test_connect_options_named_cases(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ConnectOptions(**kwargs)
    assert message in str(info.value)


def test_alpn_names_up_to_255_and_generators_kept() -> None:
    assert ConnectOptions(alpn_protocols=["x" * 255]).alpn_protocols == ("x" * 255,)
    # A generator used to be consumed by the check and stored empty.
    assert ConnectOptions(alpn_protocols=(p for p in ["h2", "http/1.1"])).alpn_protocols == (
        "h2",
        "http/1.1",
    )


# --------------------------------------------------------------- NetProcessor
PROCESSOR_ARGS = list(inspect.signature(trionet.NetProcessor).parameters)
PROCESSOR_TYPES = {
    name: p.annotation for name, p in inspect.signature(trionet.NetProcessor).parameters.items()
}


@SETTINGS
@given(field=st.sampled_from(PROCESSOR_ARGS), value=VALUES)
def test_processor_arguments(field: str, value: Any) -> None:
    net = build(trionet.NetProcessor, field, value)
    if net is not None:
        assert isinstance(net, trionet.NetProcessor)


@NET_SETTINGS
@given(field_and_value(PROCESSOR_TYPES))
def test_processor_arguments_then_serve(case: tuple[str, Any]) -> None:
    field, value = case
    net = build(trionet.NetProcessor, field, value)
    event("refused" if net is None else "served")
    if net is None:
        return

    async def echo(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_some())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(net.serve, echo, AcceptOptions(host="127.0.0.1"))
            client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            try:
                await client.send_all(b"ping")
                got = await client.receive_some()
            except trio.BrokenResourceError:
                got = b"reset"
            # A default inactivity timeout of a few microseconds may end it first.
            short = field == "default_inactivity_timeout" and value is not None and value < 1
            assert got == b"ping" or (short and got in (b"", b"reset")), got
            await client.aclose()
            server.shutdown(0)
        assert net.statistics().connections_currently_open == 0

    trio.run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propagate_handler_errors": "no"}, "NetProcessor.propagate_handler_errors='no'"),
        ({"propagate_handler_errors": 0}, "NetProcessor.propagate_handler_errors=0"),
        ({"accept_error_pause": 10**400}, "NetProcessor.accept_error_pause=1000"),
        ({"accept_error_pause": 0}, "NetProcessor.accept_error_pause=0: must be > 0"),
        ({"accept_error_pause": None}, "NetProcessor.accept_error_pause=None"),
        ({"default_inactivity_timeout": 0}, "NetProcessor.default_inactivity_timeout=0"),
        ({"default_inactivity_timeout": math.inf}, "default_inactivity_timeout=inf"),
        ({"per_client_exempt": 5}, "NetProcessor.per_client_exempt=5"),
        ({"per_client_exempt": [1]}, "NetProcessor.per_client_exempt=1: not an IP network"),
        ({"throttle": ["pause"]}, "NetProcessor.throttle=['pause']"),
        ({"max_connections": 1.0}, "NetProcessor.max_connections=1.0: must be an int"),
    ],
)
def test_processor_named_cases(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        trionet.NetProcessor(**kwargs)
    assert message in str(info.value)


def test_per_client_exempt_none_means_no_exemption() -> None:
    """``None`` is taken as "no exempt networks" (it raised a TypeError from
    iterating None that did not name the argument)."""
    net = trionet.NetProcessor(per_client_max_connections=1, per_client_exempt=None)
    table_of(net).throttle.acquire("127.0.0.1")
    assert table_of(net).throttle.client_at_limit("127.0.0.1")  # limited: not exempt


# ------------------------------------------------------------------ TcpProxy
PROXY_ARGS = ["net", "host", "port", "options", "chunk", "balance", "max_fails", "fail_backoff"]


@SETTINGS
@given(field=st.sampled_from(PROXY_ARGS), value=VALUES)
def test_tcp_proxy_arguments(field: str, value: Any) -> None:
    net = trionet.NetProcessor()
    args: dict[str, Any] = {"net": net, "host": "127.0.0.1", "port": 80, "options": None}
    args[field] = value

    def factory(**_: Any) -> trionet.TcpProxy:
        return trionet.TcpProxy(**args)

    factory.__name__ = "TcpProxy"
    proxy = build(factory, field, value)
    if proxy is not None and field == "host" and not isinstance(value, str):
        assert proxy.targets == tuple((h, p) for h, p in value)  # several targets
    elif proxy is not None:
        assert getattr(proxy, field) == value


def test_tcp_proxy_chunk_is_bounded() -> None:
    net = trionet.NetProcessor()
    with pytest.raises(ValueError, match=r"TcpProxy\.chunk=1099511627776: must be 1\.\.16777216"):
        trionet.TcpProxy(net, "127.0.0.1", 80, chunk=2**40)
    with pytest.raises(TypeError, match=r"TcpProxy\.net=None"):
        trionet.TcpProxy(None, "127.0.0.1", 80)  # type: ignore[arg-type]
