"""Server SSL contexts and the SNI certificate store.

Every configured certificate gets its own `SSLContext` built with the same settings. The
listener's context (the one the server socket uses) has an SNI callback that moves each new
connection to the context of the certificate that covers the name asked for (exact names
first, then wildcards, from each certificate's own SAN entries), or to the default (first)
certificate when the client sent no SNI or a name nobody covers. Because the callback looks
the context up on every handshake, `refresh()` can swap in a renewed certificate read from
disk: new connections get it, established ones keep theirs.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portcullis.tls.certs import CertInfo, ClientIdentity, cert_info, client_identity

if TYPE_CHECKING:
    from portcullis.config.schema import Certificate, Listener, ListenerTls

log = logging.getLogger("portcullis")

# TLS 1.2: forward secrecy and AEAD only (TLS 1.3 suites are all of that kind)
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1:!PSK:!SRP"


def server_context(tls: ListenerTls, alpn: list[str]) -> ssl.SSLContext:
    """A server context with the listener's protocol settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(tls.ciphers or DEFAULT_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls.client_auth is not None:
        ctx.load_verify_locations(tls.client_auth.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.client_auth.required else ssl.CERT_OPTIONAL
    return ctx


def _mtimes(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((-1, -1, -1))
    return tuple(out)


@dataclass(slots=True)
class _Entry:
    spec: Certificate
    context: ssl.SSLContext
    info: CertInfo
    stamp: tuple[tuple[int, int, int], ...]
    error: str | None = None


@dataclass(slots=True)
class _Index:
    exact: dict[str, ssl.SSLContext] = field(default_factory=dict)
    wildcard: dict[str, ssl.SSLContext] = field(default_factory=dict)


class CertificateStore:
    """The certificates of one TLS listener, chosen by SNI and reloaded when their files change."""

    def __init__(self, tls: ListenerTls, alpn: list[str], certificates: list[Certificate] | None = None) -> None:
        self.tls = tls
        self.alpn = alpn
        certs = list(tls.certificates) if certificates is None else certificates
        self.entries = [self._load(spec) for spec in certs]
        self._index = self._build_index()
        self._identities: OrderedDict[bytes, ClientIdentity] = OrderedDict()
        # the listener's own context: the default certificate, and the callback that picks the others
        self.context = self._make_context(certs[0])
        self.context.sni_callback = self._on_sni
        self.swaps = 0

    # ------------------------------------------------------------------ building
    def _make_context(self, spec: Certificate) -> ssl.SSLContext:
        ctx = server_context(self.tls, self.alpn)
        ctx.load_cert_chain(spec.cert, spec.key)
        return ctx

    def _paths(self, spec: Certificate) -> tuple[str, ...]:
        ca = self.tls.client_auth.ca if self.tls.client_auth is not None else None
        return (spec.cert, spec.key) + ((ca,) if ca else ())

    def _load(self, spec: Certificate) -> _Entry:
        stamp = _mtimes(self._paths(spec))
        with open(spec.cert, "rb") as fh:
            info = cert_info(fh.read())
        return _Entry(spec, self._make_context(spec), info, stamp)

    def _build_index(self) -> _Index:
        index = _Index()
        for entry in self.entries:  # the first certificate that names a host wins
            for name in entry.info.names:
                if name.startswith("*."):
                    index.wildcard.setdefault(name[2:], entry.context)
                else:
                    index.exact.setdefault(name, entry.context)
        return index

    # ------------------------------------------------------------------ handshakes
    def lookup(self, server_name: str | None) -> ssl.SSLContext:
        index = self._index
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = index.exact.get(name)
            if ctx is not None:
                return ctx
            _, dot, parent = name.partition(".")
            if dot:
                ctx = index.wildcard.get(parent)
                if ctx is not None:
                    return ctx
        return self.entries[0].context

    def _on_sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        sslobj.context = self.lookup(server_name)

    def identity(self, der: bytes | None) -> ClientIdentity | None:
        """The parsed identity of a verified client certificate (a small cache: clients reconnect)."""
        if not der:
            return None
        cache = self._identities
        found = cache.get(der)
        if found is None:
            found = cache[der] = client_identity(der)
            if len(cache) > 256:
                cache.popitem(last=False)
        return found

    # ------------------------------------------------------------------ watching
    def refresh(self) -> list[str]:
        """Reload every certificate whose files changed on disk; the paths reloaded. A file that
        cannot be loaded (a renewal half-written) leaves the previous certificate serving."""
        changed = []
        for i, entry in enumerate(self.entries):
            stamp = _mtimes(self._paths(entry.spec))
            if stamp == entry.stamp:
                continue
            try:
                fresh = self._load(entry.spec)
            except (OSError, ValueError, ssl.SSLError) as exc:
                if entry.error != str(exc):
                    log.warning("certificate %s not reloaded: %s", entry.spec.cert, exc)
                entry.error = str(exc)
                continue
            self.entries[i] = fresh
            changed.append(entry.spec.cert)
        if changed:
            self._index = self._build_index()
            self.swaps += 1
            log.info("certificates reloaded: %s", ", ".join(changed))
        return changed

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"cert": e.spec.cert, **e.info.as_dict(), **({"reload_error": e.error} if e.error else {})}
            for e in self.entries
        ]


def describe_files(tls: ListenerTls, listener: str = "") -> list[dict[str, Any]]:
    """Read the certificate files now (for the admin API in the master): names and expiry."""
    from portcullis.tls.acme import listener_certificates

    out: list[dict[str, Any]] = []
    for spec in listener_certificates(listener, tls):
        try:
            with open(spec.cert, "rb") as fh:
                out.append({"cert": spec.cert, **cert_info(fh.read()).as_dict()})
        except (OSError, ValueError) as exc:
            out.append({"cert": spec.cert, "error": str(exc)})
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def expiry_metrics(listeners: list[Listener]) -> bytes:
    """Prometheus text: each listener certificate's notAfter (as on disk now), for expiry alerts."""
    lines = []
    for lst in listeners:
        if lst.tls is None:
            continue
        for doc in describe_files(lst.tls, lst.name):
            if "not_after" not in doc:
                continue
            when = datetime.datetime.fromisoformat(str(doc["not_after"])).timestamp()
            names = ",".join(doc.get("names") or [])
            lines.append(
                f'portcullis_certificate_not_after_seconds{{listener="{_label(lst.name)}",'
                f'cert="{_label(str(doc["cert"]))}",names="{_label(names)}"}} {when:.0f}'
            )
    if not lines:
        return b""
    head = [
        "# HELP portcullis_certificate_not_after_seconds Expiry (notAfter, Unix time) of each listener certificate.",
        "# TYPE portcullis_certificate_not_after_seconds gauge",
    ]
    return ("\n".join(head + lines) + "\n").encode()
