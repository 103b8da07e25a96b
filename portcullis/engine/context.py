"""The typed per-request state: everything a request carries through the phases lives here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from portcullis.engine.messages import Headers
from portcullis.http.paths import needs_normalizing, normalize_path

if TYPE_CHECKING:
    from portcullis.engine.errors import ProxyError
    from portcullis.routing.router import CompiledRoute
    from portcullis.tls.certs import ClientIdentity


class RequestContext:
    __slots__ = (
        "body_pending",
        "bytes_in",
        "bytes_out",
        "client_cert",
        "client_ip",
        "client_port",
        "connection",
        "decision",
        "error",
        "headers",
        "host",
        "host_header",
        "identity",
        "incoming_request_id",
        "listener",
        "method",
        "path",
        "peer",
        "query",
        "request_id",
        "route",
        "scheme",
        "started",
        "status",
        "target",
        "upstream_path",
        "upstream_time",
        "vars",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        version: str,
        host: str,
        client_ip: str,
        client_port: int,
        scheme: str,
        listener: str,
        started: float,
        host_header: bytes | None = None,
        connection: bytes | None = None,
        incoming_request_id: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        raw_path, _, query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        self.query = query.decode("latin-1")
        if ("//" in path or "/." in path or "%" in path) and needs_normalizing(path):
            # routes and the upstream see the resolved path, never `/public/../admin`
            path = normalize_path(path)
            target = path.encode("latin-1") + (b"?" + query if query else b"")
        self.headers = headers
        self.version = version
        self.host = host
        self.client_ip = client_ip
        self.client_port = client_port
        self.scheme = scheme
        self.listener = listener
        self.started = started
        self.path = path
        self.host_header = host_header
        """The Host the client sent (or the authority of an absolute-form target)."""
        self.connection = connection
        """The client's Connection header: it names more hop-by-hop fields."""
        self.incoming_request_id = incoming_request_id
        self.request_id = ""
        self.route: CompiledRoute | None = None
        self.upstream_path: bytes = target
        """The target sent upstream (rewrite filters change it)."""
        self.identity: object | None = None
        self.peer: str | None = None
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_time: float | None = None
        self.decision: str | None = None
        self.error: ProxyError | None = None
        self.vars: dict[str, Any] | None = None
        self.body_pending = False
        """A request body follows the head (set by the exchange; h2 may have no Content-Length)."""
        self.client_cert: ClientIdentity | None = None
        """The verified TLS client certificate (mTLS listeners), set by the connection."""

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None
