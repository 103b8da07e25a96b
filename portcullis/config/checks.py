"""Cross-reference checks, run on a config that already passed the schema.

They find what one section cannot see alone: names that refer to nothing, duplicates, routes that
cannot answer, TLS files that cannot be read, log files that cannot be written. Each problem is a
ConfigIssue with the line of the key it is about.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterable

from portcullis.config.errors import ConfigIssue, Locations, Path, did_you_mean
from portcullis.config.schema import Config, RedirectFilter, RespondFilter, RewriteFilter, WafFilter
from portcullis.config.units import parse_address

__all__ = ["ANSWERING_FILTERS", "check_config"]

ANSWERING_FILTERS = (RedirectFilter, RespondFilter)
"""Filters that produce a response themselves, so their route needs no upstream."""


def check_config(config: Config, locations: Locations, base_dir: str) -> list[ConfigIssue]:
    """Every cross-reference problem in ``config``; file paths resolve against ``base_dir``."""
    issues: list[ConfigIssue] = []
    if isinstance(config.workers, int) and config.workers < 1:
        issues.append(locations.issue(("workers",), "must be at least 1 (or 'auto')"))
    issues += _listener_issues(config, locations)
    issues += _tls_file_issues(config, locations, base_dir)
    issues += _log_file_issues(config, locations, base_dir)
    issues += _route_issues(config, locations)
    issues += _protocol_issues(config, locations)
    return issues


def _duplicates(
    values: Iterable[tuple[Path, str]], locations: Locations, what: str
) -> list[ConfigIssue]:
    first: dict[str, Path] = {}
    issues = []
    for path, value in values:
        if value in first:
            line = locations.line(first[value])
            issues.append(locations.issue(path, f"duplicate {what} {value!r} (first at line {line})"))
        else:
            first[value] = path
    return issues


# --------------------------------------------------------------------------- listeners

def _socket_key(address: str) -> tuple[str, int]:
    """An address in a comparable form: IPs normalised, host names lower-cased."""
    host, port = parse_address(address)
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        host = host.lower().rstrip(".")
    return host, port


def _overlaps(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listening sockets would collide (same port, same or wildcard address)."""
    if a[1] != b[1]:
        return False
    if a[0] == b[0]:
        return True
    for wildcard, other in ((a[0], b[0]), (b[0], a[0])):
        try:
            wild, addr = ipaddress.ip_address(wildcard), ipaddress.ip_address(other)
        except ValueError:
            continue
        if wild.is_unspecified and wild.version == addr.version:
            return True
    return False


def _listener_issues(config: Config, locations: Locations) -> list[ConfigIssue]:
    issues = _duplicates(
        ((("listeners", i, "name"), listener.name) for i, listener in enumerate(config.listeners)),
        locations, "listener name",
    )
    sockets: list[tuple[Path, str, tuple[str, int]]] = [
        (("listeners", i, "listen"), listener.listen, _socket_key(listener.listen))
        for i, listener in enumerate(config.listeners)
    ]
    if config.admin is not None:
        sockets.append((("admin", "listen"), config.admin.listen, _socket_key(config.admin.listen)))
    for index, (path, address, key) in enumerate(sockets):
        for other_path, other_address, other_key in sockets[:index]:
            if _overlaps(key, other_key):
                line = locations.line(other_path)
                what = "duplicate listen address" if key == other_key else "listen address overlaps"
                issues.append(locations.issue(
                    path, f"{what} {address} (also used by {other_address} at line {line})"))
                break
    return issues


def _file_problem(name: str, base_dir: str) -> str | None:
    """Why the file ``name`` cannot be used, or None when it can be read."""
    if not name.strip():
        return "the file name is empty"
    full = os.path.join(base_dir, name)
    try:
        info = os.stat(full)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            return f"{full} is {kind}"
        with open(full, "rb") as fh:
            if not fh.read(1):
                return f"{full} is empty"
    except FileNotFoundError:
        return f"file not found: {full}"
    except PermissionError:
        return f"cannot read {full}: permission denied"
    except OSError as exc:
        return f"cannot read {full}: {exc.strerror or exc}"
    except ValueError:
        return f"{name!r} is not a valid file name"
    return None


def _tls_file_issues(config: Config, locations: Locations, base_dir: str) -> list[ConfigIssue]:
    files: list[tuple[Path, str]] = []
    for i, listener in enumerate(config.listeners):
        if listener.tls is None:
            continue
        for j, cert in enumerate(listener.tls.certificates):
            base: Path = ("listeners", i, "tls", "certificates", j)
            files += [((*base, "cert"), cert.cert), ((*base, "key"), cert.key)]
        if listener.tls.client_auth is not None:
            files.append((("listeners", i, "tls", "client_auth", "ca"), listener.tls.client_auth.ca))
    for name, upstream in config.upstreams.items():
        for key in ("ca", "cert", "key"):
            value = getattr(upstream.tls, key, None) if upstream.tls is not None else None
            if value is not None:
                files.append((("upstreams", name, "tls", key), value))
    issues = []
    for path, name in files:
        problem = _file_problem(name, base_dir)
        if problem is not None:
            issues.append(locations.issue(path, problem))
    return issues


def _log_file_issues(config: Config, locations: Locations, base_dir: str) -> list[ConfigIssue]:
    """Log files the workers will open for appending: found now rather than when they start."""
    files: list[tuple[Path, str]] = []
    if config.access_log is not None:
        files.append((("access_log", "path"), config.access_log.path))
    for i, route in enumerate(config.routes):
        for j, flt in enumerate(route.filters):
            if isinstance(flt, WafFilter) and flt.audit_log is not None:
                files.append((("routes", i, "filters", j, "audit_log"), flt.audit_log))
    issues = []
    for path, name in files:
        if name in ("stdout", "stderr"):
            continue
        problem = _writable_problem(name, base_dir)
        if problem is not None:
            issues.append(locations.issue(path, problem))
    return issues


def _writable_problem(name: str, base_dir: str) -> str | None:
    """Why the file ``name`` cannot be opened for appending, or None when it can."""
    if not name.strip():
        return "the file name is empty"
    full = os.path.join(base_dir, name)
    folder = os.path.dirname(full) or "."
    if os.path.isdir(full):
        return f"{full} is a directory"
    if os.path.exists(full):
        return None if os.access(full, os.W_OK) else f"cannot write {full}: permission denied"
    if not os.path.isdir(folder):
        return f"cannot create {full}: the directory {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {full}: permission denied in {folder}"
    return None


# --------------------------------------------------------------------------- routes

def _route_issues(config: Config, locations: Locations) -> list[ConfigIssue]:
    issues = _duplicates(
        ((("routes", i, "name"), route.name) for i, route in enumerate(config.routes)),
        locations, "route name",
    )
    listener_names = [listener.name for listener in config.listeners]
    for i, route in enumerate(config.routes):
        here: Path = ("routes", i)
        if route.upstream is not None and route.upstream not in config.upstreams:
            known = ", ".join(sorted(config.upstreams)) or "none are defined"
            reason = f"unknown upstream {route.upstream!r} (upstreams: {known})"
            issues.append(locations.issue((*here, "upstream"), reason + did_you_mean(
                route.upstream, config.upstreams)))
        for j, name in enumerate(route.listeners or []):
            if name not in listener_names:
                reason = f"unknown listener {name!r} (listeners: {', '.join(listener_names)})"
                issues.append(locations.issue((*here, "listeners", j), reason + did_you_mean(
                    name, listener_names)))
        if route.upstream is None and not any(isinstance(f, ANSWERING_FILTERS) for f in route.filters):
            issues.append(locations.issue(
                (*here, "upstream"),
                "required: a route needs an upstream or a filter that answers (redirect or respond)"))
        for j, flt in enumerate(route.filters):
            if not isinstance(flt, RewriteFilter):
                continue
            if flt.regex is not None and flt.replace is None:
                issues.append(locations.issue((*here, "filters", j, "regex"), "regex needs a 'replace'"))
            if flt.replace is not None and flt.regex is None:
                issues.append(locations.issue((*here, "filters", j, "replace"), "replace needs a 'regex'"))
    return issues


# --------------------------------------------------------------------------- upstream protocols

def _protocol_issues(config: Config, locations: Locations) -> list[ConfigIssue]:
    """HTTP/2 peers: `http2: true` is for https:// peers, and one upstream speaks one protocol (a
    gRPC call balanced onto an HTTP/1.1 peer would fail)."""
    issues = []
    for name, upstream in config.upstreams.items():
        here: Path = ("upstreams", name)
        h2_first: Path | None = None
        h1_peers: list[tuple[Path, str]] = []
        for i, peer in enumerate(upstream.peers):
            path: Path = (*here, "peers", i, "url")
            if upstream.http2 and peer.url.startswith("http://"):
                issues.append(locations.issue(path, "http2: true is for https:// peers (TLS with ALPN h2); "
                                                    "for cleartext HTTP/2 with prior knowledge use h2://"))
            elif upstream.peer_http2(peer.url):
                h2_first = h2_first or path
            else:
                h1_peers.append((path, peer.url))
        if h2_first is None:
            if upstream.health is not None and upstream.health.grpc_service is not None:
                reason = "gRPC health checks need HTTP/2 peers (h2://, or https:// with http2: true)"
                issues.append(locations.issue((*here, "health", "grpc_service"), reason))
            continue
        for path, url in h1_peers:
            hint = " (set http2: true on the upstream for its https:// peers)" if url.startswith("https://") else ""
            reason = (f"{url} speaks HTTP/1.1 but the peer at line {locations.line(h2_first)} speaks HTTP/2: "
                      f"the peers of one upstream speak one protocol{hint}")
            issues.append(locations.issue(path, reason))
    return issues
