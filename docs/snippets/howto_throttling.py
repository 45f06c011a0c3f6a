"""How-to: throttling and per-client limits."""

import trionet


def pausing() -> trionet.NetProcessor:
    # At 1000 open connections, stop accepting: new clients wait in the
    # kernel's listen backlog and are accepted the moment a slot frees up.
    return trionet.NetProcessor(max_connections=1000)


def closing() -> trionet.NetProcessor:
    # ATS's behaviour: accept and close at once, counting each one in
    # connections_throttled_in. Clients learn immediately and can retry elsewhere.
    return trionet.NetProcessor(max_connections=1000, throttle="close")


def per_client() -> trionet.NetProcessor:
    # At most 20 connections per client address, except from the office
    # network and the load balancers' health checks.
    return trionet.NetProcessor(
        per_client_max_connections=20,
        per_client_exempt=["10.0.0.0/8", "192.168.1.0/24"],
    )


def rate_limited() -> trionet.NetProcessor:
    # At most 100 new connections a second (bursts of up to 200), and 5 a
    # second from any one client address (bursts of 10), office excepted.
    return trionet.NetProcessor(
        max_accept_rate=100,
        accept_burst=200,
        per_client_max_accept_rate=5,
        per_client_accept_burst=10,
        per_client_exempt=["10.0.0.0/8"],
    )


def health_check_port(port: int) -> trionet.AcceptOptions:
    # A "backdoor" port (ATS's term) is exempt from both limits, so health
    # checks and admin tools still get in when the server is full.
    return trionet.AcceptOptions(host="127.0.0.1", port=port, backdoor=True)
