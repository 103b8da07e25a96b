"""Active health checks, run once for the whole gateway by the master.

Each peer with a `health` policy is probed every `interval`; after `unhealthy_threshold`
failures in a row it is marked down, after `healthy_threshold` successes up again. Changes are
logged and handed to a callback (the master sends them to every worker). A check speaks to a
peer the way the workers do: TLS for https:// peers (with the upstream's `tls` settings), and
HTTP/2 for h2:// peers and the https:// peers of an upstream with `http2: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.exceptions

from portcullis.balancing.probe_h2 import grpc_check, h2_get
from portcullis.config.schema import Config, HealthCheck, Upstream
from portcullis.config.units import parse_peer_url
from portcullis.observability.events import event
from portcullis.tls.upstream import upstream_context

log = logging.getLogger("portcullis")

_MAX_BODY = 64 * 1024


@dataclass
class PeerCheck:
    upstream: str
    url: str
    policy: HealthCheck
    healthy: bool = True
    reason: str = "not checked yet"
    successes: int = 0
    failures: int = 0
    checks: int = 0
    _pattern: re.Pattern[bytes] | None = field(default=None, repr=False)
    http2: bool = False
    ssl: ssl.SSLContext | None = field(default=None, repr=False)
    server_name: str | None = None

    def record(self, ok: bool, reason: str) -> bool:
        """Count a probe result; True when the peer's state flips."""
        self.checks += 1
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        flip = False
        if self.healthy and self.failures >= self.policy.unhealthy_threshold:
            self.healthy, flip = False, True
        elif not self.healthy and self.successes >= self.policy.healthy_threshold:
            self.healthy, flip = True, True
        if flip or ok == self.healthy:
            self.reason = reason
        return flip


def peer_check(upstream_name: str, url: str, upstream: Upstream, pattern: re.Pattern[bytes] | None) -> PeerCheck:
    """A check that reaches the peer at `url` as the workers do (TLS, HTTP/2)."""
    assert upstream.health is not None
    check = PeerCheck(upstream_name, url, upstream.health, _pattern=pattern, http2=upstream.peer_http2(url))
    if url.startswith("https://"):
        check.ssl = upstream_context(upstream.tls, check.http2)
        check.server_name = (upstream.tls.server_name if upstream.tls else None) or parse_peer_url(url)[2]
    return check


async def _h1_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, path: str, want_body: bool
) -> tuple[int, bytes]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n"
    )
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else 0
    return status, await reader.read(_MAX_BODY) if want_body else b""


async def probe(
    url: str, policy: HealthCheck, pattern: re.Pattern[bytes] | None, http2: bool = False,
    tls: ssl.SSLContext | None = None, server_name: str | None = None,
) -> tuple[bool, str]:
    """One check of a peer over HTTP/1.1 or HTTP/2 (prior knowledge, or ALPN with `tls`): (ok, reason)."""
    _, hostport, host, port = parse_peer_url(url)
    authority = policy.host or hostport
    scheme = "https" if tls is not None else "http"
    writer = None
    try:
        async with asyncio.timeout(policy.timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=server_name if tls is not None else None
            )
            want_body = pattern is not None
            if http2 and policy.grpc_service is not None:
                return await grpc_check(reader, writer, scheme, authority, policy.grpc_service)
            if http2:
                status, body = await h2_get(reader, writer, scheme, authority, policy.path, _MAX_BODY, want_body)
            else:
                status, body = await _h1_get(reader, writer, authority, policy.path, want_body)
    except TimeoutError:
        return False, f"no answer within {policy.timeout:g}s"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, h2.exceptions.H2Error) as exc:
        return False, f"check failed: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    finally:
        if writer is not None:
            writer.close()
    if status not in policy.statuses:
        return False, f"health check answered {status}"
    if pattern is not None and pattern.search(body) is None:
        return False, "health check body did not match"
    return True, f"health check answered {status}"


Notify = Callable[[PeerCheck], None]


class HealthChecker:
    """All active checks of one config; `stop` before starting the next config's."""

    def __init__(self, config: Config, notify: Notify, previous: dict[tuple[str, str], PeerCheck] | None = None):
        self.notify = notify
        self.checks: dict[tuple[str, str], PeerCheck] = {}
        for name, upstream in config.upstreams.items():
            if upstream.health is None:
                continue
            pattern = re.compile(upstream.health.body.encode()) if upstream.health.body else None
            for peer in upstream.peers:
                key = (name, peer.url)
                old = (previous or {}).get(key)
                check = peer_check(name, peer.url, upstream, pattern)
                if old is not None:  # a reload keeps what is known
                    check.healthy, check.reason = old.healthy, old.reason
                self.checks[key] = check
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(check)) for check in self.checks.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, check: PeerCheck) -> None:
        while True:
            ok, reason = await probe(
                check.url, check.policy, check._pattern, check.http2, check.ssl, check.server_name
            )
            if check.record(ok, reason):
                state = "up" if check.healthy else "down"
                event(log, "peer_health", f"upstream {check.upstream} peer {check.url} is {state}: {reason}",
                      upstream=check.upstream, peer=check.url, healthy=check.healthy, reason=reason)  # fmt: skip
                self.notify(check)
            await asyncio.sleep(check.policy.interval)
