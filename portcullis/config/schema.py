"""The config schema: one strict model per section.

Unknown keys are errors (``extra="forbid"``), every field has a documented default, and
human units (durations, sizes, addresses) are parsed here so the runtime only sees numbers.
The value types live in `types.py`, the feature filters (a tagged union on ``type``) in `filters.py`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from portcullis.config.filters import FilterConfig as FilterConfig
from portcullis.config.filters import HeaderOps as HeaderOps
from portcullis.config.filters import HeadersFilter as HeadersFilter
from portcullis.config.filters import RedirectFilter as RedirectFilter
from portcullis.config.filters import RespondFilter as RespondFilter
from portcullis.config.filters import RewriteFilter as RewriteFilter
from portcullis.config.filters import WafExclusion as WafExclusion
from portcullis.config.filters import WafFilter as WafFilter
from portcullis.config.filters import WafRegexLimits as WafRegexLimits
from portcullis.config.filters import WafThreshold as WafThreshold
from portcullis.config.filters import rewrite_template as rewrite_template
from portcullis.config.types import TOKEN
from portcullis.config.types import Address as Address
from portcullis.config.types import Cidr as Cidr
from portcullis.config.types import Duration as Duration
from portcullis.config.types import HeaderName as HeaderName
from portcullis.config.types import HeaderValue as HeaderValue
from portcullis.config.types import Regex as Regex
from portcullis.config.types import Size as Size
from portcullis.config.types import Strict as Strict
from portcullis.config.units import parse_address

# --------------------------------------------------------------------------- listeners

class Certificate(Strict):
    cert: str
    key: str


class ClientCertHeaders(Strict):
    """Request headers that carry the verified client certificate to the upstream; whatever the
    client sent in them itself is removed first."""

    subject: HeaderName | None = None
    sans: HeaderName | None = None
    fingerprint: HeaderName | None = None
    """SHA-256 of the DER certificate, lower-case hex."""


class ClientAuth(Strict):
    ca: str
    required: bool = False
    forward_headers: ClientCertHeaders | None = None


class Hsts(Strict):
    max_age: Duration = 31536000.0
    include_subdomains: bool = False
    preload: bool = False


class Acme(Strict):
    directory: str
    """The ACME server's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory."""
    email: str | None = None
    domains: list[Annotated[str, AfterValidator(str.lower)]] = Field(min_length=1)
    storage: str = "acme"
    """Directory for the account key, the certificates and pending HTTP-01 challenges."""
    ca_bundle: str | None = None
    """CA bundle to verify the ACME server with (default: the system's)."""
    renew_before: Duration = 30 * 86400.0
    check_interval: Duration = 12 * 3600.0
    retry_after: Duration = 60.0
    """First wait after a failure; doubled after each one, up to an hour."""


class SessionTickets(Strict):
    rotate: Duration = Field(default=12 * 3600.0, gt=0)
    """A new ticket key this often; the one before still resumes sessions for one more interval."""


class ListenerTls(Strict):
    certificates: list[Certificate]
    """The first one is the default (clients without SNI, or names no certificate covers).
    Required unless `acme` is set."""
    acme: Acme | None = None
    """Obtain and renew a certificate automatically (served after `certificates`)."""
    client_auth: ClientAuth | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str | None = None
    """OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are all modern); default ECDHE with AEAD only."""
    watch_interval: Duration = 10.0
    """How often the certificate files are checked for a renewal (0: never)."""
    hsts: Hsts | None = None
    http2: bool = True
    """Offer h2 by ALPN."""
    session_tickets: SessionTickets | None = SessionTickets()
    """Ticket keys made by the master, shared by all workers (null: each worker keeps its own)."""

    @model_validator(mode="before")
    @classmethod
    def _acme_only(cls, data: object) -> object:
        if isinstance(data, dict) and "certificates" not in data and data.get("acme") is not None:
            return {**data, "certificates": []}
        return data

    @model_validator(mode="after")
    def _some_certificate(self) -> ListenerTls:
        if not self.certificates and self.acme is None:
            raise ValueError("a TLS listener needs certificates or acme")
        return self


class Listener(Strict):
    name: str
    listen: Address
    tls: ListenerTls | None = None
    redirect_https: bool = False
    """A plain listener answers every request with 308 to the https URL."""
    https_port: int = Field(default=443, ge=1, le=65535)
    """The port in that URL."""
    h2c: bool = False
    """Accept prior-knowledge cleartext HTTP/2 on a plain listener."""
    shards: int = Field(default=8, ge=1, le=64)
    """Listening sockets on the address (SO_REUSEPORT, Linux), all served by every worker: the
    event loop accepts one connection per socket in each turn, so more sockets accept more at once."""

    @model_validator(mode="after")
    def _plain_only(self) -> Listener:
        if self.tls is not None and (self.redirect_https or self.h2c):
            raise ValueError("redirect_https and h2c are for plain listeners (without tls)")
        return self


# --------------------------------------------------------------------------- server-wide HTTP

class ServerTimeouts(Strict):
    client_header: Duration = 10.0
    """Time to receive a whole request head (408 after it)."""
    client_body: Duration = 30.0
    """Longest pause between two pieces of a request body (408 after it)."""
    keepalive: Duration = 75.0
    """How long an idle client connection is kept open between requests."""
    shutdown: Duration = 30.0
    """On SIGTERM, how long requests in flight may take to finish (SIGINT allows 2s at most)."""


class ServerLimits(Strict):
    max_request_line: Size = 8 * 1024
    """Longer request lines get 414."""
    max_header_bytes: Size = 32 * 1024
    """A larger request head gets 431."""
    max_headers: int = Field(default=100, ge=1)
    """More header fields get 431."""
    max_body: Size = 100 * 1024**2
    """Default body limit (413 above it); routes may override."""


class Http2(Strict):
    max_concurrent_streams: int = Field(default=128, ge=1)
    max_header_list_size: Size = 64 * 1024
    """Decoded request header block larger than this closes the connection (HPACK bombs)."""
    initial_window: Size = Field(default=256 * 1024, ge=65535, le=2**31 - 1)
    """Per-stream receive window for request bodies."""
    connection_window: Size = Field(default=4 * 1024 * 1024, ge=65535, le=2**31 - 1)
    max_resets: int = Field(default=200, ge=1)
    """Streams a client may reset within `reset_window` before GOAWAY (rapid reset, CVE-2023-44487)."""
    reset_window: Duration = 10.0


class Server(Strict):
    trusted_proxies: list[Cidr] = []
    """Only clients in these blocks may set X-Forwarded-* / Forwarded themselves."""
    request_id_header: HeaderName = "X-Request-Id"
    timeouts: ServerTimeouts = ServerTimeouts()
    limits: ServerLimits = ServerLimits()
    http2: Http2 = Http2()


# --------------------------------------------------------------------------- upstreams

class Peer(Strict):
    url: str
    weight: int = Field(default=1, ge=1, le=1000)
    backup: bool = False
    """Used only when no primary peer is available."""
    max_conns: int = Field(default=0, ge=0)
    """Requests in flight to this peer at most (0: no limit); more wait `queue_timeout`, then 503."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https", "h2"):
            raise ValueError("peer url must start with http://, https:// or h2:// (cleartext HTTP/2)")
        hostport = rest.split("/", 1)[0]
        if not hostport or hostport.startswith(":"):
            raise ValueError("peer url has no host")
        if "/" in rest and rest.split("/", 1)[1]:
            raise ValueError("peer url cannot have a path; use a rewrite filter on the route")
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport += ":443" if scheme == "https" else ":80"
        parse_address(hostport)
        return value


class UpstreamTimeouts(Strict):
    connect: Duration = 5.0
    """A connect attempt longer than this fails with 502."""
    response: Duration = 60.0
    """Time from the request being sent to the response head (504 after it)."""
    idle: Duration = 60.0
    """Longest pause while reading an upstream response body."""


class Keepalive(Strict):
    max_idle: int = Field(default=64, ge=0)
    """Idle connections kept per peer."""
    idle_timeout: Duration = 60.0
    """An idle pooled connection older than this is closed."""


def _hash_key(value: str) -> str:
    kind, _, name = value.partition(":")
    if value in ("client_ip", "path") or (kind in ("header", "cookie", "query") and name):
        return value
    raise ValueError("hash_key is client_ip, path, header:NAME, cookie:NAME or query:NAME")


HashKey = Annotated[str, AfterValidator(_hash_key)]


def _statuses(value: object) -> object:
    """`[502, 503]` or a range string `500-599`."""
    if isinstance(value, str) and "-" in value:
        low, _, high = value.partition("-")
        if low.strip().isdigit() and high.strip().isdigit():
            return list(range(int(low), int(high) + 1))
    return value


Statuses = Annotated[list[Annotated[int, Field(ge=100, le=599)]], BeforeValidator(_statuses)]


class HealthCheck(Strict):
    """Active checks, run once for the whole gateway by the master."""

    path: str = "/healthz"
    interval: Duration = 2.0
    timeout: Duration = 1.0
    statuses: Statuses = list(range(200, 400))
    body: Regex | None = None
    """A regular expression the response body must contain."""
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=2, ge=1)
    host: str | None = None
    """Host header to send (default: the peer's address)."""
    grpc_service: str | None = Field(default=None, max_length=100)
    """HTTP/2 peers only: check with the gRPC health protocol (grpc.health.v1.Health/Check) for this
    service ("" for the server as a whole) instead of a GET of `path`; up when it answers SERVING."""


class Outlier(Strict):
    """Passive checks: eject a peer whose failure rate in `window` reaches `failure_rate`."""

    failure_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    window: Duration = 10.0
    min_requests: int = Field(default=10, ge=1)
    ejection: Duration = 10.0
    """First ejection; each further one lasts this much longer, up to `max_ejection`."""
    max_ejection: Duration = 300.0
    max_ejected_share: float = Field(default=0.5, ge=0.0, le=1.0)


class Breaker(Strict):
    failures: int = Field(default=5, ge=1)
    """Consecutive failures that open the breaker."""
    open_for: Duration = 10.0
    """Then one probe request is let through (half-open)."""
    max_outstanding: int = Field(default=0, ge=0)
    """Requests in flight to one peer beyond which it takes no more (0: no limit)."""


class Retries(Strict):
    attempts: int = Field(default=1, ge=0, le=10)
    """Further tries after the first, each on another peer when there is one."""
    on_statuses: Statuses = []
    """Peer answers that are retried too (e.g. [502, 503, 504]); connect failures and resets always are."""
    max_body: Size = 64 * 1024
    """Requests with a larger body are not retried once it has been sent."""
    budget: float = Field(default=0.2, ge=0.0, le=1.0)
    """At most this share of requests may be retries."""
    total_timeout: Duration | None = None
    """All tries together; per try, `timeouts.response` applies."""


class Sticky(Strict):
    cookie: str = "portcullis_peer"
    max_age: Duration | None = None


class UpstreamTls(Strict):
    verify: bool = True
    ca: str | None = None
    """CA bundle to verify the peers with (default: the system bundle)."""
    server_name: str | None = None
    """SNI and the name verified (default: the peer's host)."""
    cert: str | None = None
    """Client certificate (mTLS to the upstream), with `key`."""
    key: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class Discovery(Strict):
    resolve_interval: Duration | None = None
    """Resolve peers given by host name again this often; every A/AAAA record becomes a peer."""
    file: str | None = None
    """A YAML file holding the peer list (the shape of `peers`), watched for changes."""
    watch_interval: Duration = 2.0


class Upstream(Strict):
    peers: list[Peer] = []
    """At least one, unless `discovery.file` provides them."""
    discovery: Discovery | None = None
    balance: Literal["round_robin", "least_conn", "random", "p2c_ewma", "ip_hash", "consistent_hash"] = (
        "round_robin"
    )
    hash_key: HashKey | None = None
    """For consistent_hash: client_ip, path, header:NAME, cookie:NAME or query:NAME."""
    sticky: Sticky | None = None
    """Keep a client on the peer it first got, by a cookie the proxy sets."""
    health: HealthCheck | None = None
    outlier: Outlier | None = None
    breaker: Breaker | None = None
    retries: Retries = Retries()
    slow_start: Duration = 0.0
    """A peer coming back ramps its weight up over this time."""
    queue_timeout: Duration = 1.0
    """How long a request waits when every peer is at `max_conns` (then 503)."""
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    keepalive: Keepalive = Keepalive()
    tls: UpstreamTls | None = None
    """For https:// peers (without it: verified against the system CA bundle)."""
    http2: bool = False
    """Speak HTTP/2 to the https:// peers (ALPN h2), e.g. for gRPC; h2:// peers always do (h2c)."""

    def peer_http2(self, url: str) -> bool:
        """Whether the peer at `url` is spoken to in HTTP/2."""
        return url.startswith("h2://") or (self.http2 and url.startswith("https://"))

    @model_validator(mode="after")
    def _check(self) -> Upstream:
        if self.balance == "consistent_hash" and self.hash_key is None:
            raise ValueError("balance consistent_hash needs a hash_key")
        if not self.peers and (self.discovery is None or self.discovery.file is None):
            raise ValueError("an upstream needs peers (or discovery.file to read them from)")
        if self.peers and all(p.backup for p in self.peers):
            raise ValueError("at least one peer must not be a backup")
        return self


# --------------------------------------------------------------------------- routes

class Match(Strict):
    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_regex: Regex | None = None
    methods: list[str] | None = None
    headers: dict[HeaderName, str] | None = None
    """Header name -> exact value required ("*" means present)."""

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for method in value:
            if not TOKEN.match(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return [m.upper() for m in value]

    @field_validator("path", "path_prefix")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("a path must start with /")
        return value


class RouteLimits(Strict):
    max_body: Size | None = None


class Route(Strict):
    name: str
    listeners: list[str] | None = None
    match: Match = Match()
    filters: list[FilterConfig] = []
    upstream: str | None = None
    limits: RouteLimits = RouteLimits()


# --------------------------------------------------------------------------- process / operations

class Admin(Strict):
    listen: Address = "127.0.0.1:9901"
    token: str | None = None
    """Bearer token every endpoint but /healthz requires; without one, only loopback is allowed."""

    @model_validator(mode="after")
    def _loopback_without_token(self) -> Admin:
        host = parse_address(self.listen)[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if self.token is None and not loopback:
            raise ValueError("an admin listener off loopback needs a token")
        return self


class State(Strict):
    redis: str | None = None


class AccessLog(Strict):
    path: str = "stdout"
    """`stdout`, `stderr` or a file (reopened on SIGUSR1, for logrotate)."""
    format: Literal["json", "combined"] = "json"


class Config(Strict):
    workers: int | Literal["auto"] = 1
    admin: Admin | None = None
    state: State = State()
    access_log: AccessLog | None = None
    """One line per request; off unless configured."""
    server: Server = Server()
    listeners: list[Listener] = Field(min_length=1)
    upstreams: dict[str, Upstream] = {}
    routes: list[Route] = []
    demo: bool = False
    """Start the built-in demo upstream on 127.0.0.1:8081 (used by the embedded default config)."""
