"""TLS for connections (ATS ``SSLNetProcessor``): negotiated-session facts.

(The handshake and the TLS wrapping are added by the TLS work; this module
holds what a ``Connection`` exposes as ``conn.tls``.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TLSInfo"]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated on a TLS connection.

    Attributes:
      version: e.g. ``"TLSv1.3"``.
      cipher: the cipher suite name.
      alpn_protocol: the ALPN protocol agreed on, or None.
      server_name: the SNI name the client sent (server side) or asked for
        (client side), or None.
    """

    version: str | None
    cipher: str | None
    alpn_protocol: str | None
    server_name: str | None
