"""Host names: what connect() resolves, the resolvers look up, a server binds
and TLS sends as SNI is the name that was checked -- no NUL cutting it short,
no over-long label, no IDNA mapping that changes it, no bare UnicodeError.

Nothing here queries DNS: names reach either a recording resolver or trio's
getaddrinfo hook (a scripted answer), and invalid names are refused before any
lookup.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trionet
from trionet._base._addr import MAX_LABEL, MAX_NAME, host_problem
from trionet._processor import table_of

NUL_BYPASS = "localhost\x00.example.com"

INVALID = [
    (NUL_BYPASS, "control character, '\\x00' at position 9"),
    ("127.0.0.1\x00.example.com", "control character"),  # a literal cut at the NUL
    ("fe80::1%lo\x00x", "control character"),  # ...or its scope id
    ("ab\ncd", "control character, '\\n'"),
    ("tab\there", "control character"),
    ("del\x7f.example", "control character"),
    ("c1\x85.example", "control character"),
    ("a" * 64 + ".com", "a label of 64 characters, more than 63"),
    (".".join(["a" * 63] * 4) + ".com", "259 characters long, more than 253"),
    ("a..b", "an empty label"),
    (".example.com", "an empty label"),
    ("ß\u200d.com", "not a valid internationalised name"),  # IDNA 2008 CONTEXTJ
    ("\u2764.example", "not a valid internationalised name"),
    ("local\u00adhost", "IDNA encodes it as 'localhost'"),  # soft hyphen dropped
    ("".join(chr(0xFF41 + ord(c) - 97) for c in "localhost"), "as 'localhost'"),  # fullwidth
    ("localhost\u3002example", "IDNA encodes it as 'localhost.example'"),  # ideographic dot
    ("a" * 64 + "ü.com", "not a valid internationalised name"),  # label too long
    ("127.1", "ends in a number"),  # inet_aton: 127.0.0.1
    ("2130706433", "ends in a number"),  # inet_aton: 127.0.0.1
    ("0x7f.1", "ends in a number"),
    ("", "an empty string"),
]

VALID = [
    "localhost",
    "example.com",
    "example.com.",
    "Example.COM",
    "foo_bar.internal",
    "a" * 63 + ".com",
    ".".join(["a" * 63] * 3) + "." + "a" * 61,  # 253 characters
    "bücher.example",
    "Bücher.example",
    "127.0.0.1",
    "::1",
    "[::1]",
    "fe80::1%lo",
    "::ffff:127.0.0.1",
]


@pytest.mark.parametrize(("host", "why"), INVALID)
def test_invalid_names_are_named(host: str, why: str) -> None:
    problem = host_problem(host)
    assert problem is not None and why in problem


@pytest.mark.parametrize("host", VALID)
def test_valid_names_and_literals_pass(host: str) -> None:
    assert host_problem(host) is None


class Recording:
    """A resolver that answers every name with one address and records the names."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        self.asked.append(host)
        await trio.lowlevel.checkpoint()
        return [(socket.AF_INET, ("127.0.0.1", self.port))]


def _listener() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock, sock.getsockname()[1]


def _accepted_nothing(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def _is_remote_literal(host: str) -> bool:
    """An IP literal off this host: never connected to from a test."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return not address.is_loopback


async def test_nul_in_the_name_is_refused_not_cut() -> None:
    """The issue's case: with the default resolver this connected to 127.0.0.1."""
    net = trionet.NetProcessor()
    sock, port = _listener()
    with sock:
        with pytest.raises(trionet.ResolveError) as info:
            await net.connect(NUL_BYPASS, port)
        assert repr(NUL_BYPASS) in str(info.value)
        assert info.value.errno == socket.EAI_NONAME
        await trio.sleep(0.05)  # a connect that got through would be pending by now
        assert _accepted_nothing(sock)
    stats = net.statistics()
    assert (stats.connects_total, stats.connect_failures) == (1, 1)
    assert stats.connections_currently_open == 0 and table_of(net).throttle.open == 0


@pytest.mark.parametrize(("host", "why"), INVALID[:-1])  # "" is a TypeError (tested elsewhere)
async def test_connect_refuses_before_any_resolver(host: str, why: str) -> None:
    net = trionet.NetProcessor()
    resolver = Recording(9)
    with pytest.raises(trionet.ResolveError) as info:
        await net.connect(host, 80, trionet.ConnectOptions(resolver=resolver))
    assert why in str(info.value) and repr(host) in str(info.value)
    assert str(info.value).endswith(f"{host!r}:80")
    assert resolver.asked == []
    assert table_of(net).throttle.open == 0


async def test_over_long_name_with_the_default_resolver_is_a_resolve_error() -> None:
    """It used to escape as a bare UnicodeError from the idna codec."""
    net = trionet.NetProcessor()
    for host in ("a" * 64 + ".com", "x" * 300, "a..b", "ß\u200d.com"):
        with pytest.raises(trionet.ResolveError, match="invalid host name"):
            await net.connect(host, 80)
    assert net.statistics().connect_failures == 4


@pytest.mark.parametrize("host", [NUL_BYPASS, "a" * 64 + ".com", "local\u00adhost"])
async def test_resolvers_refuse_invalid_names_themselves(host: str) -> None:
    """Called directly (not through connect), both resolvers check too; trio's
    getaddrinfo hook is never reached."""
    hook_calls: list[object] = []

    class Hook(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
            hook_calls.append(host)
            raise AssertionError("a refused name reached getaddrinfo")

        async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
            raise NotImplementedError

    trio.socket.set_custom_hostname_resolver(Hook())
    caching = trionet.CachingResolver()
    for resolver in (trionet.GetaddrinfoResolver(), caching):
        with pytest.raises(trionet.ResolveError) as info:
            await resolver.resolve(host, 80, 0)
        assert repr(host) in str(info.value)
    assert hook_calls == [] and len(caching) == 0


async def test_a_valid_name_reaches_getaddrinfo_unchanged() -> None:
    """What is checked is what is looked up: the IDNA form trio sends."""
    seen: list[object] = []

    class Hook(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", port))]

        async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
            raise NotImplementedError

    trio.socket.set_custom_hostname_resolver(Hook())
    got = await trionet.GetaddrinfoResolver().resolve("Bücher.example", 80, 0)
    assert got == [(socket.AF_INET, ("192.0.2.7", 80))]
    assert seen == [b"xn--bcher-kva.example"]


def test_bind_host_server_hostname_and_proxy_upstream_are_checked() -> None:
    with pytest.raises(ValueError, match=r"AcceptOptions\.host='localhost\\x00evil'"):
        trionet.AcceptOptions(host="localhost\x00evil")
    with pytest.raises(ValueError, match=r"ConnectOptions\.server_hostname='a\\nb'"):
        trionet.ConnectOptions(server_hostname="a\nb")
    with pytest.raises(ValueError, match=r"ConnectOptions\.server_hostname=5: must be a str"):
        trionet.ConnectOptions(server_hostname=5)  # type: ignore[arg-type]
    net = trionet.NetProcessor()
    with pytest.raises(ValueError, match=r"TcpProxy\.host='up\\x00stream'"):
        trionet.TcpProxy(net, "up\x00stream", 80)
    with pytest.raises(TypeError, match=r"TcpProxy\.host=b'up'"):
        trionet.TcpProxy(net, b"up", 80)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"TcpProxy\.port=0"):
        trionet.TcpProxy(net, "up", 0)
    assert trionet.ConnectOptions(server_hostname="bücher.example").server_hostname


# ------------------------------------------------------------ hypothesis
LDH = string.ascii_letters + string.digits + "-_"
LABEL = st.text(alphabet=LDH, min_size=0, max_size=70)
HOSTILE_CHAR = st.sampled_from(
    ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u00ad", "\u200b", "\u200d",
     "\u3002", "\uff0e", "ß", "ü", "İ", "\u2764", "%", " ", "/", ".", ":"]
)  # fmt: skip


@st.composite
def host_names(draw: st.DrawFn) -> str:
    labels = draw(st.lists(LABEL, min_size=1, max_size=6))
    name = ".".join(labels)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(name)))
        name = name[:at] + draw(HOSTILE_CHAR) + name[at:]
    return name


HOSTS = st.one_of(
    host_names(),
    st.text(max_size=40),  # any unicode, controls and surrogates included
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)


def _encoded(host: str) -> str:
    import idna

    return host if host.isascii() else idna.encode(host, uts46=True).decode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTS)
def test_connect_either_resolves_the_exact_name_or_names_the_refused_one(host: str) -> None:
    """Property: connect() either hands the resolver exactly ``host`` (and the
    name then has no control character, labels of 1..63, at most 253
    characters once encoded) or raises ResolveError naming ``repr(host)``
    without asking the resolver. Nothing else -- no UnicodeError."""

    if _is_remote_literal(host):
        assert host_problem(host) is None  # literals pass unchanged; no traffic off loopback
        return

    async def main() -> None:
        net = trionet.NetProcessor()
        sock, port = _listener()
        resolver = Recording(port)
        opts = trionet.ConnectOptions(resolver=resolver, connect_timeout=5)
        with sock:
            try:
                conn = await net.connect(host, port, opts)
            except trionet.ResolveError as exc:
                assert repr(host) in str(exc) and resolver.asked == []
                assert host_problem(host) is not None
            except TypeError as exc:
                assert host == "" and "host=''" in str(exc)
            except ValueError as exc:  # a literal of the other family than asked for
                assert f"host={host!r}" in str(exc)
            except trionet.ConnectError:
                # A loopback literal with nothing listening on it (::1 here):
                # a connect failure naming the target, after the check passed.
                assert host_problem(host) is None and resolver.asked == []
            else:
                conn.close()
                assert host_problem(host) is None
                if resolver.asked:
                    assert resolver.asked == [host]
                    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in host)
                    labels = _encoded(host).rstrip(".").split(".")
                    assert all(1 <= len(label) <= MAX_LABEL for label in labels)
                    assert len(".".join(labels)) <= MAX_NAME
        assert table_of(net).throttle.open == 0
        assert net.statistics().connections_currently_open == 0

    trio.run(main)


@settings(max_examples=100, deadline=None)
@given(HOSTS)
def test_option_and_proxy_host_fields_name_the_bad_value(host: str) -> None:
    """The same check behind AcceptOptions.host, ConnectOptions.server_hostname
    and TcpProxy's upstream: accepted exactly when host_problem() accepts it,
    else a ValueError naming the field and ``repr(host)``."""
    ok = host_problem(host) is None
    net = trionet.NetProcessor()
    builders = {
        "AcceptOptions.host": lambda: trionet.AcceptOptions(host=host),
        "ConnectOptions.server_hostname": lambda: trionet.ConnectOptions(server_hostname=host),
        "TcpProxy.host": lambda: trionet.TcpProxy(net, host, 80),
    }
    for field, build in builders.items():
        if ok:
            build()
            continue
        with pytest.raises(ValueError) as info:
            build()
        assert f"{field}={host!r}" in str(info.value)


def test_cli_refuses_a_bad_upstream_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """TcpProxy now refuses the name at start-up (it used to fail every
    session); the command turns that into a usage error, not a traceback."""
    from trionet._apps._cli import main

    with pytest.raises(SystemExit) as info:
        main(["proxy", "--port", "0", "--upstream", "a..b:80"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    # The CLI checks the host with the library's own rule, so the line names
    # the flag (before TcpProxy would refuse it).
    assert "argument --upstream: 'a..b:80': expected HOST:PORT" in err
    assert "('a..b': an empty label)" in err
    assert "Traceback" not in err
