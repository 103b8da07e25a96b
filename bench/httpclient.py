"""A minimal blocking HTTP/1.1 client on raw sockets.

Only what the harness needs: send a GET, read exactly one response (Content-Length or
chunked), and leave the connection open for the next request or for idling.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


class HttpError(RuntimeError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Reader:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise HttpError("connection closed before the response was complete")
        self.buf += chunk

    def until(self, marker: bytes, limit: int = 65536) -> bytes:
        while True:
            index = self.buf.find(marker)
            if index >= 0:
                out = bytes(self.buf[: index + len(marker)])
                del self.buf[: index + len(marker)]
                return out
            if len(self.buf) > limit:
                raise HttpError(f"no {marker!r} within {limit} bytes")
            self._fill()

    def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out


def request_bytes(host: str, port: int, path: str, close: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: portcullis-bench"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_response(sock: socket.socket) -> Response:
    reader = _Reader(sock)
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    status_line, *header_lines = head[:-4].split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = reader.until(b"\r\n").split(b";", 1)[0].strip()
            size = int(size_line, 16)
            if size == 0:
                while reader.until(b"\r\n") != b"\r\n":  # trailer fields, then the blank line
                    pass
                break
            body += reader.exactly(size)
            reader.exactly(2)
        data = bytes(body)
    elif "content-length" in headers:
        data = reader.exactly(int(headers["content-length"]))
    else:
        raise HttpError("response has neither Content-Length nor chunked encoding")
    if reader.buf:
        raise HttpError("unexpected bytes after the response")
    return Response(int(parts[1]), headers, data)


def get(host: str, port: int, path: str, timeout: float = 5.0) -> Response:
    """One GET on a fresh connection that is closed afterwards."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(host, port, path, close=True))
        return read_response(sock)
