#!/usr/bin/env python3
"""A test upstream for the integration suite: a small, honest HTTP/1.1 server on asyncio streams.

Run it as a subprocess:

    python3 tests/servers/upstream.py --port 0 [--name A]

It prints one JSON line on stdout once it listens: {"port": N, "ws_port": M, "pid": P}.
`ws_port` serves a WebSocket echo (the `websockets` library's server) on any path.

Endpoints (every request body is read streaming and hashed, whatever the endpoint):
  /echo[/...]          JSON: method, target, version, headers (list of pairs), body length, sha256, trailers
  /size/N              N bytes of the test pattern, Content-Length (built in memory, for small N)
  /chunked/N           N bytes in chunks of varying sizes, chunked, with the trailer `X-Trailer: done`
  /stream/N            N bytes with Content-Length, generated on the fly (a 1 GiB answer costs no memory)
  /slow-head/SECONDS   waits, then answers
  /slow-body/SECONDS   sends the head and half the body, stalls SECONDS, then sends the rest
  /close               answers with Connection: close, then closes
  /reset               resets the connection (RST) without answering
  /garbage             answers with bytes that are not HTTP, then closes
  /truncate            sends a head with Content-Length: 100 and 10 bytes, then closes
  /status/CODE         answers CODE (204 and 304 without a body)
  /upload              JSON: length and sha256 of the request body
  /slow-upload/SECONDS waits before reading the request body, then answers like /upload
  /rheaders?K=V&...    answers with the query pairs as response headers
  /stats               JSON counters (see `Stats`); not counted in them
  /log                 JSON: the last requests received (method, target, headers, complete); not counted
  /work[/...]          JSON {"server": NAME, "method": ..., "body_length": ...} after this server's delay,
                       with this server's status (both set by /control; by default no delay, 200)
  /control?delay=S&status=CODE&healthy=0|1&retry_after=S
                       sets them (any subset) and answers them as JSON; not counted
  /healthz             200 "ok" while healthy (see /control), else 503; not counted

The body pattern: the byte at offset i is i % 256 (`pattern_chunks` yields it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import socket
import struct
import sys
from collections.abc import Iterator
from urllib.parse import parse_qsl

PERIOD = bytes(range(256))
_PATTERN = PERIOD * 1025  # 256 KiB + one period, so any offset can start a slice of up to 256 KiB
CHUNK = 256 * 1024


def pattern_chunks(n: int, offset: int = 0, size: int = CHUNK) -> Iterator[bytes]:
    """The first `n` bytes of the test pattern from `offset`, in pieces of at most `size` (<= 256 KiB)."""
    size = min(size, CHUNK)
    while n > 0:
        k = min(n, size)
        start = offset % 256
        yield _PATTERN[start : start + k]
        offset += k
        n -= k


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


class BadRequest(Exception):
    pass


class Stats:
    def __init__(self) -> None:
        self.accepted = 0
        """Every TCP connection accepted."""
        self.connections = 0
        """Connections that carried at least one counted request (not /stats or /log)."""
        self.requests = 0
        """Request heads received (not /stats or /log), complete or not."""
        self.completed = 0
        """Requests whose body was read to its end."""
        self.bad = 0
        """Requests this server could not parse."""
        self.active = 0
        self.log: collections.deque[dict[str, object]] = collections.deque(maxlen=500)

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "connections": self.connections,
            "requests": self.requests,
            "completed": self.completed,
            "bad": self.bad,
            "active": self.active,
        }


class Request:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.path, _, self.query = target.partition("?")
        self.body_length = 0
        self.body_sha = hashlib.sha256()
        self.trailers: list[tuple[str, str]] = []

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def all_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for v in self.all_values("connection") for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(raw: bytes) -> Request:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = (p.decode("latin-1") for p in parts)
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise BadRequest(f"bad header line {line!r}")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise BadRequest(f"control character in {line!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return Request(method, target, version, headers)


async def read_body(req: Request, reader: asyncio.StreamReader) -> None:
    """Read (and hash) the whole request body, streaming."""
    te = req.all_values("transfer-encoding")
    cl = req.all_values("content-length")
    if te:
        codings = [t.strip().lower() for v in te for t in v.split(",")]
        if codings[-1] != "chunked" or cl:
            raise BadRequest("bad framing")
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {line!r}") from None
            if size == 0:
                break
            while size > 0:
                piece = await reader.read(min(size, CHUNK))
                if not piece:
                    raise asyncio.IncompleteReadError(b"", size)
                req.body_sha.update(piece)
                req.body_length += len(piece)
                size -= len(piece)
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk data not followed by CRLF")
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line[:-2].partition(b":")
            req.trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    elif cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise BadRequest("bad Content-Length")
        size = int(cl[0])
        while size > 0:
            piece = await reader.read(min(size, CHUNK))
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            req.body_sha.update(piece)
            req.body_length += len(piece)
            size -= len(piece)


_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 404: "Not Found", 418: "I'm a teapot", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable",
}  # fmt: skip


def head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class Server:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = Stats()
        # behaviour set through /control (for the load-balancing tests)
        self.delay = 0.0
        self.status = 200
        self.healthy = True
        self.retry_after: str | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        stats.accepted += 1
        stats.active += 1
        counted = False
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(head_bytes(431, [("Content-Length", "0"), ("Connection", "close")]))
                    return
                try:
                    req = parse_head(raw)
                except BadRequest as exc:
                    stats.bad += 1
                    stats.log.append({"bad": str(exc)})
                    writer.write(head_bytes(400, [("Content-Length", "0"), ("Connection", "close")]))
                    return
                internal = req.path in ("/stats", "/log", "/control", "/healthz")
                entry: dict[str, object] = {}
                if not internal:
                    stats.requests += 1
                    if not counted:
                        counted = True
                        stats.connections += 1
                    entry = {"seq": stats.requests, "method": req.method, "target": req.target,
                             "headers": req.headers, "complete": False}
                    stats.log.append(entry)
                has_body = bool(req.header("transfer-encoding") or req.header("content-length") not in (None, "0"))
                if has_body and (req.header("expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if req.path.startswith("/slow-upload/"):
                    # a peer that is slow to read: the body waits in the proxy's and the kernel's buffers
                    await asyncio.sleep(float(req.path.rsplit("/", 1)[1]))
                try:
                    await read_body(req, reader)
                except BadRequest as exc:
                    stats.bad += 1
                    stats.log.append({"bad": str(exc)})
                    writer.write(head_bytes(400, [("Content-Length", "0"), ("Connection", "close")]))
                    return
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if not internal:
                    stats.completed += 1
                    entry["complete"] = True
                    entry["body_length"] = req.body_length
                keep = await self.respond(req, reader, writer)
                await writer.drain()
                if not keep or not req.keep_alive:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            stats.active -= 1
            if not writer.is_closing():
                writer.close()

    async def respond(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer `req`; False when the connection must close afterwards."""
        path = req.path
        head_only = req.method == "HEAD"
        close = [] if req.keep_alive else [("Connection", "close")]
        base = [("X-Upstream", self.name)]

        def simple(status: int, body: bytes, ctype: str = "text/plain", extra: list[tuple[str, str]] = ()) -> bool:
            headers = [*base, ("Content-Type", ctype), ("Content-Length", str(len(body))), *extra, *close]
            writer.write(head_bytes(status, headers) + (b"" if head_only else body))
            return True

        def json_body(doc: object) -> bool:
            return simple(200, (json.dumps(doc) + "\n").encode(), "application/json")

        parts = path.split("/")
        first = parts[1] if len(parts) > 1 else ""
        arg = parts[2] if len(parts) > 2 else ""
        if first == "echo":
            return json_body(
                {
                    "server": self.name,
                    "method": req.method,
                    "target": req.target,
                    "version": req.version,
                    "headers": req.headers,
                    "body_length": req.body_length,
                    "body_sha256": req.body_sha.hexdigest(),
                    "trailers": req.trailers,
                }
            )
        if first in ("upload", "slow-upload"):
            return json_body({"length": req.body_length, "sha256": req.body_sha.hexdigest()})
        if first == "stats":
            return json_body(self.stats.as_dict())
        if first == "log":
            return json_body(list(self.stats.log))
        if first == "control":
            for key, value in parse_qsl(req.query):
                if key == "delay":
                    self.delay = float(value)
                elif key == "status":
                    self.status = int(value)
                elif key == "healthy":
                    self.healthy = value not in ("0", "false")
                elif key == "retry_after":
                    self.retry_after = value or None
            return json_body({"delay": self.delay, "status": self.status, "healthy": self.healthy,
                              "retry_after": self.retry_after})
        if first == "healthz":
            return simple(200, b"ok\n") if self.healthy else simple(503, b"unhealthy\n")
        if first == "work":
            if self.delay:
                await asyncio.sleep(self.delay)
            extra = [("Retry-After", self.retry_after)] if self.retry_after and self.status == 503 else []
            doc = {"server": self.name, "method": req.method, "target": req.target, "body_length": req.body_length}
            return simple(self.status, (json.dumps(doc) + "\n").encode(), "application/json", extra)
        if first == "size":
            return simple(200, b"".join(pattern_chunks(int(arg))), "application/octet-stream")
        if first == "stream":
            n = int(arg)
            headers = [*base, ("Content-Type", "application/octet-stream"), ("Content-Length", str(n)), *close]
            writer.write(head_bytes(200, headers))
            if not head_only:
                for piece in pattern_chunks(n):
                    writer.write(piece)
                    await writer.drain()
            return True
        if first == "chunked":
            n = int(arg)
            headers = [*base, ("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked"),
                       ("Trailer", "X-Trailer"), *close]  # fmt: skip
            writer.write(head_bytes(200, headers))
            if head_only:
                return True
            sizes = (1, 100, 4096, 16384, 777, 65536)
            offset = 0
            i = 0
            while offset < n:
                k = min(sizes[i % len(sizes)], n - offset)
                i += 1
                piece = next(pattern_chunks(k, offset))
                writer.write(b"%x\r\n%b\r\n" % (k, piece))
                offset += k
                await writer.drain()
            writer.write(b"0\r\nX-Trailer: done\r\n\r\n")
            return True
        if first == "slow-head":
            await asyncio.sleep(float(arg))
            return simple(200, b"slow head\n")
        if first == "slow-body":
            headers = [*base, ("Content-Type", "text/plain"), ("Content-Length", "20"), *close]
            writer.write(head_bytes(200, headers) + (b"" if head_only else b"0123456789"))
            await writer.drain()
            if head_only:
                return True
            await asyncio.sleep(float(arg))
            writer.write(b"abcdefghij")
            return True
        if first == "close":
            headers = [*base, ("Content-Type", "text/plain"), ("Content-Length", "8"), ("Connection", "close")]
            writer.write(head_bytes(200, headers) + (b"" if head_only else b"closing\n"))
            return False
        if first == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if first == "garbage":
            writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        if first == "truncate":
            headers = [*base, ("Content-Type", "text/plain"), ("Content-Length", "100")]
            writer.write(head_bytes(200, headers) + (b"" if head_only else b"0123456789"))
            return False
        if first == "status":
            code = int(arg)
            if code in (204, 304) or code < 200:
                extra = [("ETag", '"v1"')] if code == 304 else []
                writer.write(head_bytes(code, [*base, *extra, *close]))
                return True
            return simple(code, f"status {code}\n".encode())
        if first == "rheaders":
            extra = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True)]
            return simple(200, b"headers\n", extra=extra)
        return simple(404, b"no such endpoint\n")


async def ws_echo(connection) -> None:  # type: ignore[no-untyped-def]
    try:
        async for message in connection:
            await connection.send(message)
    except Exception:
        return


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ws-port", type=int, default=0)
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args()
    server = Server(args.name)
    srv = await asyncio.start_server(server.handle, args.host, args.port, limit=256 * 1024, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    ws_port = None
    try:
        from websockets.asyncio.server import serve

        ws_server = await serve(ws_echo, args.host, args.ws_port, max_size=None)
        ws_port = next(iter(ws_server.sockets)).getsockname()[1]
    except ImportError:
        pass
    print(json.dumps({"port": port, "ws_port": ws_port, "pid": __import__("os").getpid()}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
