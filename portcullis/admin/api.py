"""The admin listener: /healthz, /readyz, /metrics and the JSON API under /api/."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from portcullis.config.schema import Admin
from portcullis.config.units import parse_address
from portcullis.http.simple_server import SimpleRequest, SimpleResponse, start_simple_server
from portcullis.observability.metrics import render
from portcullis.tls.store import describe_files, expiry_metrics

if TYPE_CHECKING:
    from portcullis.supervisor.master import Master

_SECRET_KEYS = ("token", "password", "secret", "key")


def redact(value: Any, key: str = "") -> Any:
    """The config without its secrets (certificate key paths are kept: they are paths, not keys)."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and key != "key" and any(s in key.lower() for s in _SECRET_KEYS):
        return "***"
    return value


def _json(status: int, doc: Any) -> SimpleResponse:
    return SimpleResponse(status, (json.dumps(doc, indent=2) + "\n").encode())


class AdminAPI:
    def __init__(self, master: Master, config: Admin) -> None:
        self.master = master
        self.token = config.token

    def _authorized(self, request: SimpleRequest) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def handle(self, request: SimpleRequest) -> SimpleResponse:
        path, method = request.path, request.method
        if path == "/healthz":
            return SimpleResponse(200, b"ok\n", "text/plain")
        if not self._authorized(request):
            return SimpleResponse(401, b'{"error": "bearer token required"}\n', headers={"WWW-Authenticate": "Bearer"})
        master = self.master
        if path == "/readyz":
            ready = master.ready and not master.stopping and all(w.generation >= 1 for w in master.workers)
            return SimpleResponse(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
        if path == "/metrics":
            snapshots = await master.collect_stats()
            body = render(snapshots, self._master_counters()) + expiry_metrics(master.config.listeners)
            return SimpleResponse(200, body, "text/plain; version=0.0.4; charset=utf-8")
        if path == "/api/reload":
            if method != "POST":
                return _json(405, {"error": "use POST"})
            ok, error = await master.reload()
            return _json(200 if ok else 422, {"reloaded": ok, "generation": master.generation, "error": error})
        if method != "GET":
            return _json(405, {"error": "method not allowed"})
        if path in ("/api", "/api/", "/api/status"):
            return _json(200, self.status())
        if path == "/api/config":
            return _json(200, redact(master.config.model_dump(mode="json")))
        if path == "/api/upstreams":
            return _json(200, await self.upstreams())
        if path == "/api/listeners":
            return _json(200, self.listeners())
        return _json(404, {"error": f"no such endpoint: {path}"})

    def _master_counters(self) -> dict[str, Any]:
        m = self.master
        return {
            "reloads": m.reloads, "reload_failures": m.reload_failures, "generation": m.generation,
            "workers": len(m.workers),
        }  # fmt: skip

    def status(self) -> dict[str, Any]:
        m = self.master
        return {
            "generation": m.generation,
            "config_file": m.filename,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.loaded_at)),
            "last_reload_error": m.last_reload_error,
            "reloads": m.reloads,
            "reload_failures": m.reload_failures,
            "uptime_seconds": round(time.time() - m.started_at, 1),
            "workers": [{"index": w.index, "pid": w.pid, "generation": w.generation} for w in m.workers],
        }

    async def upstreams(self) -> dict[str, Any]:
        """Each peer's state: the master's active checks, and what the workers see (ejection,
        circuit breaker, load); a peer any worker takes out of service is shown with why."""
        snapshots = await self.master.collect_stats()
        out: dict[str, Any] = {}
        for name, up in self.master.config.upstreams.items():
            peers = []
            for p in up.peers:
                check = self.master.health.checks.get((name, p.url))
                seen = [s.get("gauges", {}).get("peers", {}).get(name, {}).get(p.url) for s in snapshots]
                seen = [v for v in seen if v]
                down = [v for v in seen if v["state"] != "up"]
                state = down[0]["state"] if down else ("up" if seen else "unknown")
                peers.append({
                    "url": p.url, "weight": p.weight, "backup": p.backup, "state": state,
                    "reason": down[0]["reason"] if down else (check.reason if check else "no active check"),
                    "active_check": None if check is None else {"healthy": check.healthy, "reason": check.reason},
                    "in_flight": sum(v["active"] for v in seen),
                })  # fmt: skip
            out[name] = {"balance": up.balance, "peers": peers}
        return out

    def listeners(self) -> list[dict[str, Any]]:
        out = []
        for lst in self.master.config.listeners:
            certs = describe_files(lst.tls, lst.name) if lst.tls else []  # names, expiry, as on disk now
            doc = {
                "name": lst.name, "listen": lst.listen, "tls": lst.tls is not None,
                "sockets": len(self.master.sockets.get(lst.name, [])),  # the shards bound (1 off Linux)
                "certificates": certs,
            }  # fmt: skip
            tickets = self.master.tickets.describe(lst.name)  # rotations, never the keys
            if tickets is not None:
                doc["session_tickets"] = tickets
            out.append(doc)
        return out


async def start_admin(master: Master, config: Admin) -> asyncio.Server:
    host, port = parse_address(config.listen)
    api = AdminAPI(master, config)
    return await start_simple_server(api.handle, host, port)
