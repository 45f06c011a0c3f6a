"""The ``trionet`` command line: argument types and the parser.

Each argument type raises ``ArgumentTypeError`` with the bad value quoted;
argparse prefixes the option's name, so the user reads ``argument --port:
'99999': ...``. Running what was parsed is :mod:`trionet._apps._cli`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import unicodedata
from typing import Final, NoReturn, final

from .._base._addr import UNIX_PREFIX, host_problem
from .._base._options import unix_path_problem
from .._base._version import __version__
from ._logging import LOG_FORMATS, LOG_LEVELS

__all__ = [
    "BAD_VALUE",
    "MAX_WORKERS",
    "PROG",
    "ParseProblem",
    "bind_host",
    "build_parser",
    "collect_problems",
    "command_parser",
    "drop_bad_values",
]

PROG: Final = "trionet"
# More worker processes than this is a typo (or a fork bomb), not a deployment:
# ATS runs one net thread per core, and no machine this runs on has 1024.
MAX_WORKERS: Final = 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ----------------------------------------------------------- argument types
# Each raises ArgumentTypeError with the bad value quoted; argparse prefixes
# the option's name, so the user reads "argument --port: '99999': ...".
def _whole(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        # int() refuses more than 4300 digits: say so rather than "not a number".
        digits = text.strip().lstrip("+-").replace("_", "")
        why = "too large" if digits.isdigit() else expected
        raise argparse.ArgumentTypeError(f"{text!r}: {why}") from None


def _port(text: str) -> int:
    value = _whole(text, "expected a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0..65535")
    return value


def _listen(text: str) -> int | str:
    """A port, or ``unix:/path`` (``unix:@name``) for a Unix socket (its path returned)."""
    if not text.startswith(UNIX_PREFIX):
        return _port(text)
    path = text[len(UNIX_PREFIX) :]
    if (why := unix_path_problem(path)) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT or unix:/PATH ({why})")
    return path


def _positive_int(text: str) -> int:
    value = _whole(text, "expected a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _workers(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_WORKERS} workers")
    return value


def _seconds(text: str, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, e.g. 30 or 0.5") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = "zero or more" if allow_zero else "a positive number of"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {rule} seconds")
    return value or 0.0  # "-0" is 0, not -0.0 ("grace -0 s")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected connections per second, e.g. 100 or 0.5"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number per second")
    return value


def _grace(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _seconds_or_off(text: str) -> float:
    """Seconds, where 0 turns the check off (``--worker-timeout 0``)."""
    return _seconds(text, allow_zero=True)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a network, e.g. 10.0.0.0/8") from None


# A host name as getaddrinfo takes it: dot-separated labels of letters, digits,
# '-' and '_' (seen in real names), 63 bytes each, 253 in all, after IDNA for a
# non-ASCII name. Anything else is refused here, naming the option, rather than
# sent to the resolver: a NUL (C would cut the name there), spaces, control
# characters; and format, private-use and unassigned characters, which IDNA
# would drop or pass on (``local\u00adhost`` is ``localhost`` after IDNA).
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _host_problem(text: str) -> str | None:
    """Why ``text`` is not a host the CLI takes, or ``None``. The library's own
    check (:func:`trionet._resolve.host_problem`: control characters, lengths,
    IDNA, a numeric last label) first, so the CLI refuses what the options
    would; then the shell-facing rule that every label is letters, digits,
    ``-`` or ``_`` (no spaces or other separators)."""
    why = host_problem(text)
    if why is not None:
        return why
    try:
        ipaddress.ip_address(text)  # also IPv6 with a %scope
        return None
    except ValueError:
        pass
    if any(unicodedata.category(c)[0] in "CZ" for c in text):
        return "a separator or unassigned character"
    name = text.encode("idna").decode("ascii")  # host_problem checked it encodes
    labels = name.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "a label with a character other than letters, digits, '-' and '_'"
    return None


def _host(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text  # [::1]
    if host and (why := _host_problem(host)) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an IP address or a host name: {why}")
    return host


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith(UNIX_PREFIX):  # a Unix socket: ("unix:/path", 0)
        if (why := unix_path_problem(text[len(UNIX_PREFIX) :])) is not None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT or unix:/PATH ({why})")
        return text, 0
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:80
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if (why := _host_problem(host)) is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 ({host!r}: {why})"
        )
    return host, int(port)


def _alpn(text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    for name in names:
        if not name or not name.isascii() or not name.isprintable() or len(name) > 255:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected protocol names separated by commas, e.g. h2,http/1.1 "
                f"(each 1..255 printable ASCII characters; {name!r} is not)"
            )
    return names


def _server_name(text: str) -> str:
    why = _host_problem(text) if text else "empty"
    if why is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a host name: {why}")
    return text


def bind_host(host: str) -> str | None:
    """The ``AcceptOptions.host`` for ``--host``/``--stats-host``.

    ``::`` alone binds IPv6 only (trionet sets ``IPV6_V6ONLY``, so that an
    IPv4 socket can share the port); "every address" means both families,
    which is ``host=None``: ``::`` and ``0.0.0.0`` on one port. ``0.0.0.0``
    stays IPv4 only, as written.
    """
    if host == "":
        return None
    try:
        if ipaddress.ip_address(host) == ipaddress.IPv6Address("::"):
            return None
    except ValueError:
        pass
    return host


# ------------------------------------------------------------------- parser
@final
class _Parser(argparse.ArgumentParser):
    """argparse, with its error message kept on one line.

    Most messages quote the value with repr(), which escapes a newline; a few
    (``unrecognized arguments: ...``) print arguments as given, and an argument
    with a newline or another control character would split the error line or
    write raw control characters to the terminal. They are escaped here.
    """

    # --check: report the error (ParseProblem) instead of exiting, so that
    # every problem can be listed.
    raise_errors: bool = False

    def error(self, message: str) -> NoReturn:
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        if self.raise_errors:
            raise ParseProblem(message)
        super().error(message)


class ParseProblem(Exception):
    """A command-line error, raised (not printed) while ``--check`` collects them."""


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> _Parser | None:
    """The sub-command's parser (``echo``, ``proxy``) in ``parser``, or None."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: _Parser = action.choices[command]
            return sub
    return None


def collect_problems(parser: argparse.ArgumentParser) -> list[str]:
    """Make ``parser`` (and the parser of each sub-command) raise
    :class:`ParseProblem` instead of exiting, and record a bad option value
    in the returned list instead of stopping at it (the option's value is
    then :data:`BAD_VALUE`, see :func:`drop_bad_values`). For ``--check``."""
    problems: list[str] = []
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.extend(action.choices.values())
    for each in parsers:
        if isinstance(each, _Parser):
            each.raise_errors = True
        for action in each._actions:
            if action.option_strings and (action.type is not None or action.choices):
                action.type = _Collecting(action, problems)
                action.choices = None
    return problems


BAD_VALUE: Final = object()


@final
class _Collecting:
    """An option's argument type and choices, reporting a bad value to a list."""

    def __init__(self, action: argparse.Action, problems: list[str]) -> None:
        self.name = "/".join(action.option_strings)  # as argparse names it
        self.convert = action.type
        self.choices = action.choices
        self.problems = problems

    def __call__(self, text: str) -> object:
        try:
            value = self.convert(text) if callable(self.convert) else text
        except argparse.ArgumentTypeError as exc:
            self.problems.append(f"argument {self.name}: {exc}")
            return BAD_VALUE
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(repr, self.choices))
            self.problems.append(
                f"argument {self.name}: invalid choice: {text!r} (choose from {choices})"
            )
            return BAD_VALUE
        return value


def drop_bad_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Give every option :func:`collect_problems` found bad its default back
    (its problem is recorded), so that the checks after parsing can run."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value is BAD_VALUE:
            setattr(args, action.dest, action.default)
        elif isinstance(value, list) and BAD_VALUE in value:
            setattr(args, action.dest, [v for v in value if v is not BAD_VALUE])


def _common_options() -> _Parser:
    """Options every sub-command takes (a parent parser)."""
    p = _Parser(add_help=False)
    listen = p.add_argument_group("listening")
    listen.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; '::' for every address, IPv6 and IPv4; "
        "'0.0.0.0' for every IPv4 address)",
    )
    limits = p.add_argument_group("limits and timeouts")
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="open connections allowed, inbound and outbound together (default: no limit)",
    )
    limits.add_argument(
        "--throttle",
        choices=("pause", "close"),
        default="pause",
        help="at the limit: 'pause' accepting (clients wait in the backlog; default) "
        "or accept and 'close' at once (ATS)",
    )
    limits.add_argument(
        "--per-client-max",
        type=_positive_int,
        metavar="N",
        help="inbound connections allowed from one client address",
    )
    limits.add_argument(
        "--max-accept-rate",
        type=_rate,
        metavar="R",
        help="new connections per second over the server (token bucket; at the limit "
        "--throttle decides: 'pause' leaves clients in the backlog, 'close' closes them)",
    )
    limits.add_argument(
        "--accept-burst",
        type=_positive_int,
        metavar="N",
        help="connections --max-accept-rate admits at once (default: one second's worth)",
    )
    limits.add_argument(
        "--per-client-max-accept-rate",
        type=_rate,
        metavar="R",
        help="new connections per second from one client address (excess closed)",
    )
    limits.add_argument(
        "--per-client-accept-burst",
        type=_positive_int,
        metavar="N",
        help="connections one client may open at once (default: one second's worth)",
    )
    limits.add_argument(
        "--inactivity-timeout",
        type=_seconds,
        metavar="S",
        help="close a connection after S seconds without traffic",
    )
    limits.add_argument(
        "--active-timeout",
        type=_seconds,
        metavar="S",
        help="close a connection S seconds after it opened, busy or not",
    )
    limits.add_argument(
        "--grace",
        type=_grace,
        default=5.0,
        metavar="S",
        help="on SIGINT/SIGTERM, give open connections S seconds to finish (default 5)",
    )
    scale = p.add_argument_group("scale-out and security")
    scale.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help=f"worker processes sharing the port with SO_REUSEPORT (default 1, at most "
        f"{MAX_WORKERS}; limits apply to the whole fleet; --stats-port serves one page "
        "summing every worker)",
    )
    scale.add_argument(
        "--worker-timeout",
        type=_seconds_or_off,
        default=30.0,
        metavar="S",
        help="with --workers: a worker whose event loop is blocked S seconds has its stack "
        "logged and is replaced (default 30; 0 turns the check off)",
    )
    scale.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain")
    scale.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    scale.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header on every connection (behind HAProxy...)",
    )
    scale.add_argument(
        "--proxy-protocol-trusted",
        type=_network,
        action="append",
        default=[],
        metavar="NET",
        help="accept PROXY headers only from this network (repeatable; default: loopback "
        "only; '0.0.0.0/0' and '::/0' trust every source)",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--stats-port",
        type=_port,
        metavar="PORT",
        help="serve statistics on http://127.0.0.1:PORT/stats (JSON) and /metrics "
        "(Prometheus), health checks on /healthz and /readyz",
    )
    ops.add_argument(
        "--stats-host",
        type=_host,
        default="127.0.0.1",
        help="address for the stats page (default 127.0.0.1; '::' for every address)",
    )
    logs = p.add_argument_group("logging and configuration")
    logs.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="log records at this level and above to stderr (default info)",
    )
    logs.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="'text': one readable line per record (default); 'json': one JSON object "
        "per line, with the record's structured fields",
    )
    logs.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not log a line per closed connection (logger trionet.access, INFO)",
    )
    logs.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file (keys are the long option names with "
        "'_' for '-', e.g. max_connections = 1000); options given here override it",
    )
    logs.add_argument(
        "--check",
        action="store_true",
        help="check the options and --config file, print every problem (one per line) "
        "and exit: 0 if there is none, else 1",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``trionet`` argument parser (sub-commands ``echo`` and ``proxy``)."""
    parser = _Parser(
        prog=PROG,
        description="Network servers on trionet: an echo server and a TCP proxy with "
        "connection limits, timeouts and a statistics page.",
        epilog="Run 'trionet COMMAND --help' for a command's options. "
        "SIGINT/SIGTERM stop gracefully; a second one stops at once (with --workers, "
        "a second SIGINT: a repeated SIGTERM changes nothing). SIGHUP reloads with "
        "--workers (new worker processes, no connection dropped), else stops gracefully.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    echo = commands.add_parser(
        "echo",
        parents=[common],
        help="echo every byte back",
        description="An echo server: every byte a client sends is sent back.",
    )
    echo.add_argument(
        "--port",
        type=_listen,
        default=7007,
        help="port (default 7007; 0 = any), or unix:/PATH for a Unix socket",
    )
    proxy = commands.add_parser(
        "proxy",
        parents=[common],
        help="forward connections to an upstream server",
        description="A TCP proxy: each client connection is forwarded to the upstream "
        "server, bytes flowing both ways with backpressure and half-close.",
        epilog="example: trionet proxy --listen 8080 --upstream 127.0.0.1:80 "
        "--max-connections 1000 --inactivity-timeout 30 --stats-port 9100",
    )
    proxy.add_argument(
        "--listen",
        "--port",
        dest="port",
        type=_listen,
        required=True,
        metavar="PORT",
        help="port to listen on (0 = any), or unix:/PATH for a Unix socket (a stale socket "
        "file is replaced; --host does not apply)",
    )
    proxy.add_argument(
        "--upstream",
        type=_host_port,
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="where to forward connections (HOST:PORT, or unix:/PATH for a Unix socket; "
        "repeatable: several upstreams, balanced, with failover)",
    )
    proxy.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds to resolve and connect upstream (default 10), failover to the "
        "next upstream included",
    )
    _upstream_options(proxy)
    proxy.add_argument(
        "--no-zero-copy",
        dest="zero_copy",
        action="store_false",
        help="copy the bytes through the process instead of moving them inside "
        "the kernel with splice(2) (the default on Linux for plain TCP)",
    )
    return parser


def _upstream_options(proxy: argparse.ArgumentParser) -> None:
    """The proxy's upstream side: several upstreams, PROXY header, TLS."""
    many = proxy.add_argument_group("several upstreams")
    many.add_argument(
        "--balance",
        choices=("round-robin", "least-conn"),
        default="round-robin",
        help="how sessions are spread over the upstreams: in turn (default) or to the "
        "one with the fewest open sessions",
    )
    many.add_argument(
        "--max-fails",
        type=_positive_int,
        default=3,
        metavar="N",
        help="connect failures in a row that mark an upstream down (default 3)",
    )
    many.add_argument(
        "--fail-backoff",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds an upstream marked down is skipped before one session retries it "
        "(default 10; doubles after each failed retry, up to 300)",
    )
    up = proxy.add_argument_group("upstream connection")
    up.add_argument(
        "--send-proxy",
        choices=("v1", "v2"),
        help="send a PROXY protocol header (v1 text, v2 binary) with the client's address "
        "to the upstream",
    )
    up.add_argument(
        "--upstream-tls",
        action="store_true",
        help="connect to the upstream over TLS, verifying its certificate (system CAs "
        "unless --upstream-ca)",
    )
    up.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="trust only the CA certificates in FILE (PEM) for the upstream",
    )
    up.add_argument(
        "--upstream-sni",
        type=_server_name,
        metavar="NAME",
        help="server name to send (SNI) and to verify the certificate against "
        "(default: the upstream's host)",
    )
    up.add_argument(
        "--upstream-alpn",
        type=_alpn,
        metavar="PROTOS",
        help="ALPN protocols to offer, comma-separated (e.g. h2,http/1.1)",
    )
