"""Client SSL contexts for `https://` peers: verification on by default, against the system CA
bundle or a configured CA, with an optional client certificate (mTLS to the upstream). Peers of
an upstream with `http2: true` are offered only `h2` by ALPN."""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portcullis.config.schema import UpstreamTls


@functools.lru_cache(maxsize=64)
def _context(
    ca: str | None, verify: bool, cert: str | None, key: str | None, min_version: str, http2: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def upstream_context(tls: UpstreamTls | None, http2: bool = False) -> ssl.SSLContext:
    """The context for a group's https peers (shared by the groups with the same settings; a
    reload that changes nothing reuses it, and with it OpenSSL's session cache)."""
    if tls is None:
        return _context(None, True, None, None, "1.2", http2)
    return _context(tls.ca, tls.verify, tls.cert, tls.key, tls.min_version, http2)
