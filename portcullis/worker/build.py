"""Compile a validated `Config` into the `Runtime` a worker serves."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

from portcullis.balancing.discovery import PeerDiscovery, Target
from portcullis.config.schema import Config, Route
from portcullis.config.schema import Peer as PeerSpec
from portcullis.config.schema import Upstream as UpstreamConfig
from portcullis.config.units import parse_address
from portcullis.engine.chain import compile_chain
from portcullis.engine.filter import Filter
from portcullis.engine.services import Services
from portcullis.engine.watchdog import Watchdog
from portcullis.features.registry import build_filter
from portcullis.observability.access_log import AccessLog
from portcullis.observability.stats import WorkerStats
from portcullis.routing.router import CompiledRoute, HostMatcher, Router
from portcullis.upstream.group import Peer, UpstreamGroup
from portcullis.upstream.h2_pool import H2Pool
from portcullis.upstream.link import LinkPool
from portcullis.upstream.pool import Pool
from portcullis.worker.runtime import ListenerRuntime, Runtime


def _pool_key(upstream: str, url: str) -> str:
    return f"{upstream}|{url}"


def _peer(services: Services, upstream: str, url: str, origin: str, spec: PeerSpec, config: UpstreamConfig) -> Peer:
    key = _pool_key(upstream, url)
    # peers are services: a reload keeps their warm connections, health and load figures
    pool: LinkPool
    if config.peer_http2(url):
        pool = services.get_or_create(H2Pool, key, H2Pool)  # shared connections, a stream per request
    else:
        pool = services.get_or_create(Pool, key, Pool)
    pool.max_idle = config.keepalive.max_idle
    pool.idle_timeout = config.keepalive.idle_timeout
    peer = services.get_or_create(Peer, key, partial(Peer, url, spec.weight, pool))
    peer.pool = pool  # (a reload may have switched the upstream between HTTP/1.1 and HTTP/2)
    peer.counters = _stats(services).peer(upstream, peer.label)
    peer.base_weight, peer.backup, peer.max_conns, peer.origin = spec.weight, spec.backup, spec.max_conns, origin
    return peer


def _stats(services: Services) -> WorkerStats:
    return services.get_or_create(WorkerStats, "stats", WorkerStats)


def build_upstreams(config: Config, services: Services) -> tuple[dict[str, UpstreamGroup], list[PeerDiscovery]]:
    groups: dict[str, UpstreamGroup] = {}
    discoveries: list[PeerDiscovery] = []
    for name, upstream in config.upstreams.items():
        peers = []
        for spec in upstream.peers:
            peer = _peer(services, name, spec.url, spec.url, spec, upstream)
            if upstream.breaker is None:
                peer.breaker = None
            if upstream.outlier is None:
                peer.outlier = None
            if upstream.health is None:
                peer.active_ok = True
            peers.append(peer)
        group = groups[name] = UpstreamGroup(name, upstream, peers)
        if upstream.discovery is not None:
            discoveries.append(PeerDiscovery(name, upstream.peers, upstream.discovery, _adopt(services, group)))
    return groups, discoveries


def _adopt(services: Services, group: UpstreamGroup) -> Callable[[Sequence[Target]], None]:
    def apply(targets: Sequence[Target]) -> None:
        specs = {t.url: PeerSpec(url=t.url, weight=t.weight, backup=t.backup, max_conns=t.max_conns) for t in targets}
        peers = [_peer(services, group.name, t.url, t.origin, specs[t.url], group.config) for t in targets]
        if any(not p.backup for p in peers):
            group.set_peers(peers)

    return apply


def compile_route(
    route: Route, config: Config, groups: dict[str, UpstreamGroup], services: Services
) -> CompiledRoute:
    match = route.match
    headers = tuple(
        (name.lower().encode(), None if value == "*" else value.encode())
        for name, value in (match.headers or {}).items()
    )
    return CompiledRoute(
        name=route.name,
        counters=_stats(services).route(route.name),
        chain=compile_chain([build_filter(f, services) for f in route.filters]),
        upstream=groups[route.upstream] if route.upstream else None,
        max_body=route.limits.max_body
        if route.limits.max_body is not None
        else config.server.limits.max_body,
        listeners=frozenset(route.listeners) if route.listeners is not None else None,
        host=HostMatcher(match.host) if match.host else None,
        path=match.path,
        path_prefix=match.path_prefix,
        path_regex=re.compile(match.path_regex) if match.path_regex else None,
        methods=frozenset(match.methods) if match.methods else None,
        headers=headers,
    )


def build_runtime(config: Config, services: Services, watchdog: Watchdog, generation: int = 0) -> Runtime:
    groups, discoveries = build_upstreams(config, services)
    routes = [compile_route(r, config, groups, services) for r in config.routes]
    listeners: dict[str, ListenerRuntime] = {}
    for listener in config.listeners:
        host, port = parse_address(listener.listen)
        mine = [r for r in routes if r.listeners is None or listener.name in r.listeners]
        listeners[listener.name] = ListenerRuntime(
            name=listener.name,
            host=host,
            port=port,
            scheme="https" if listener.tls else "http",
            router=Router(mine),
        )
    stats = _stats(services)
    access_log = AccessLog(config.access_log.path, config.access_log.format) if config.access_log else None
    runtime = Runtime(config, listeners, groups, watchdog, stats, access_log, generation)
    runtime.discoveries = discoveries
    return runtime


def filters_of(runtime: Runtime) -> list[Filter]:
    """Every filter instance of a runtime once (for start and close)."""
    seen: dict[int, Filter] = {}
    for listener in runtime.listeners.values():
        for route in listener.router.routes:
            for flt in route.chain.filters:
                seen[id(flt)] = flt
    return list(seen.values())
