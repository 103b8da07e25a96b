"""What a listener adds around the codecs: TLS identities, HSTS, the https redirect, and the
choice between HTTP/1.1 and HTTP/2 (ALPN on TLS, the connection preface for prior-knowledge h2c).

Nothing here exists for a listener that configures none of it: the plain `H1Connection` serves it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from portcullis.engine.forwarding import forward_head_fields
from portcullis.engine.messages import Headers
from portcullis.http.h1 import RequestHead
from portcullis.server.h1 import H1Connection, status_line
from portcullis.tls.acme import read_challenge
from portcullis.tls.certs import ClientIdentity

if TYPE_CHECKING:
    from portcullis.config.schema import Listener, Server
    from portcullis.tls.store import CertificateStore
    from portcullis.worker.runtime import ListenerRuntime, Runtime

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HSTS = b"strict-transport-security"
_ACME_PREFIX = b"/.well-known/acme-challenge/"


def _header_safe(value: str) -> bytes:
    return "".join(c if " " <= c < "\x7f" else "?" for c in value).encode("ascii")


@dataclass(frozen=True, slots=True)
class ListenerEdge:
    name: str
    store: CertificateStore | None
    hsts: bytes | None
    identity_headers: tuple[tuple[bytes, str], ...]
    """(header, field of the identity) pairs sent to the upstream."""
    strip: frozenset[bytes]
    redirect_port: int | None
    h2: bool
    """TLS: offer h2 by ALPN; plain: accept prior-knowledge h2c."""
    mtls: bool
    acme_dirs: tuple[str, ...] = ()
    """Plain listeners: where pending ACME HTTP-01 answers are (served before anything else)."""

    def with_identity(self, headers: Headers, ident: ClientIdentity | None) -> Headers:
        """Remove the identity headers the client sent itself; add the verified ones."""
        strip = self.strip
        out = [(n, v) for n, v in headers if n.lower() not in strip]
        if ident is not None:
            for name, field in self.identity_headers:
                if field == "subject":
                    value = ident.subject
                elif field == "sans":
                    value = ", ".join(ident.sans)
                else:
                    value = ident.fingerprint
                out.append((name, _header_safe(value)))
        return out

    def client_identity(self, transport: asyncio.BaseTransport) -> ClientIdentity | None:
        if not self.mtls or self.store is None:
            return None
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            return None
        return self.store.identity(sslobj.getpeercert(binary_form=True))


def build_edge(
    listener: Listener, server: Server, store: CertificateStore | None, acme_dirs: tuple[str, ...] = ()
) -> ListenerEdge:
    tls = listener.tls
    hsts = None
    idents: list[tuple[bytes, str]] = []
    mtls = False
    if tls is not None:
        if tls.hsts is not None:
            value = f"max-age={int(tls.hsts.max_age)}"
            if tls.hsts.include_subdomains:
                value += "; includeSubDomains"
            if tls.hsts.preload:
                value += "; preload"
            hsts = value.encode()
        if tls.client_auth is not None:
            mtls = True
            fwd = tls.client_auth.forward_headers
            if fwd is not None:
                for field in ("subject", "sans", "fingerprint"):
                    name = getattr(fwd, field)
                    if name:
                        idents.append((name.encode(), field))
    return ListenerEdge(
        name=listener.name,
        store=store,
        hsts=hsts,
        identity_headers=tuple(idents),
        strip=frozenset(n.lower() for n, _ in idents),
        redirect_port=listener.https_port if listener.redirect_https else None,
        h2=tls.http2 if tls is not None else listener.h2c,
        mtls=mtls,
        acme_dirs=acme_dirs if tls is None else (),
    )


def needs_edge(edge: ListenerEdge) -> bool:
    """Whether the listener needs more than the plain HTTP/1.1 connection."""
    return bool(edge.hsts or edge.strip or edge.mtls or edge.redirect_port is not None or edge.acme_dirs)


class EdgeH1Connection(H1Connection):
    """HTTP/1.1 with the listener's TLS extras: client identity, HSTS, https redirect."""

    __slots__ = ("_edge",)

    def __init__(self, runtime: Runtime, listener: ListenerRuntime, edge: ListenerEdge) -> None:
        super().__init__(runtime, listener)
        self._edge = edge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client_cert = self._edge.client_identity(transport)
        super().connection_made(transport)

    def request_head(self, head: RequestHead) -> None:
        edge = self._edge
        if edge.acme_dirs and head.target.startswith(_ACME_PREFIX):
            answer = read_challenge(edge.acme_dirs, head.target[len(_ACME_PREFIX) :])
            if answer is not None:
                self._answer_and_close(200, b"Content-Type: application/octet-stream\r\n", answer, head.method)
                return
        if edge.redirect_port is not None:
            self._redirect(head, edge.redirect_port)
            return
        if edge.strip:
            head.headers = edge.with_identity(head.headers, self.client_cert)
        super().request_head(head)

    def send_head(
        self, status: int, headers: Headers, length: int | None, no_body: bool, close: bool
    ) -> None:
        hsts = self._edge.hsts
        if hsts is not None and not any(n.lower() == _HSTS for n, _ in headers):
            headers.append((b"Strict-Transport-Security", hsts))
        super().send_head(status, headers, length, no_body, close)

    def forward_head(
        self, status: int, headers: Headers, no_body: bool, request_id: str, request_id_header: bytes
    ) -> bool:
        if self._edge.hsts is None:
            return super().forward_head(status, headers, no_body, request_id, request_id_header)
        # the codec's fast path writes the peer's fields as they are: HSTS needs them through send_head
        return forward_head_fields(self, status, headers, no_body, request_id, request_id_header)

    def _redirect(self, head: RequestHead, port: int) -> None:
        host = self._listener.host if head.host_name is None else head.host_name
        authority = host if port == 443 else f"{host}:{port}"
        target = head.target if head.target.startswith(b"/") else b"/"
        location = b"https://" + authority.encode("latin-1") + target
        self._answer_and_close(308, b"Location: " + location + b"\r\n", b"", head.method)

    def _answer_and_close(self, status: int, fields: bytes, body: bytes, method: str) -> None:
        """A response of the listener itself (never an upstream's), then the connection ends."""
        out = status_line(status) + fields + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        self._runtime.stats.request("", method, status, 0.0)
        self.stop_parsing()
        if self.transport is not None:
            self._put(out + (b"" if method == "HEAD" else body))
        self._close()


class _Dispatch(asyncio.Protocol):
    """Chooses the codec once the transport tells which protocol the client speaks, then hands
    the transport over (`set_protocol`); anything that still arrives here is passed on."""

    __slots__ = ("_buf", "_inner", "_make_h1", "_make_h2", "_transport")

    def __init__(self, make_h1: Callable[[], asyncio.Protocol], make_h2: Callable[[], asyncio.Protocol]) -> None:
        self._make_h1 = make_h1
        self._make_h2 = make_h2
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._buf = b""

    def _hand_over(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        transport = self._transport
        assert transport is not None
        self._inner = inner
        transport.set_protocol(inner)
        inner.connection_made(transport)
        return inner

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class AlpnDispatch(_Dispatch):
    """TLS: the handshake is done when `connection_made` runs, so ALPN decides at once."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sslobj = transport.get_extra_info("ssl_object")
        chosen = sslobj.selected_alpn_protocol() if isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket) else None
        self._hand_over(self._make_h2() if chosen == "h2" else self._make_h1())


class PrefaceDispatch(_Dispatch):
    """Plain listener with h2c: the first bytes tell the HTTP/2 connection preface from HTTP/1.1.
    A client that sends nothing for FIRST_BYTES_TIMEOUT seconds is disconnected (the codecs'
    own timeouts start once one of them has the connection)."""

    __slots__ = ("_timer",)
    FIRST_BYTES_TIMEOUT = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            self.FIRST_BYTES_TIMEOUT, transport.close
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        buf = self._buf + data
        if len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
            self._buf = buf
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buf = b""
        # (the one it handed over: `self._inner`, read here, would still be None to mypy)
        self._hand_over(self._make_h2() if buf.startswith(H2_PREFACE) else self._make_h1()).data_received(buf)

    def eof_received(self) -> bool | None:
        if self._inner is None and self._transport is not None:
            self._transport.close()
            return None
        return super().eof_received()
