"""Active health checks over HTTP/2, for the peers the workers speak HTTP/2 to (h2c with prior
knowledge, or TLS with ALPN h2): a GET of the health path, or the gRPC health protocol
(grpc.health.v1.Health/Check), which gRPC servers answer where they refuse a GET."""

from __future__ import annotations

import asyncio
import struct

import h2.config
import h2.connection
import h2.events

_READ = 65536
_GRPC_CHECK = b"/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING} in protobuf


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fields: list[tuple[bytes, bytes]], body: bytes,
    max_body: int, want_body: bool,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on a fresh connection: (status, response header and trailer fields, up to `max_body`
    bytes of body when `want_body`). ConnectionError when the peer resets, refuses or closes first."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
        raise ConnectionError("the peer did not agree to HTTP/2 by ALPN")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, fields, end_stream=not body)
    if body:
        conn.send_data(stream_id, body, end_stream=True)  # (a few bytes: within any window)
    writer.write(conn.data_to_send())
    status = 0
    seen: dict[bytes, bytes] = {}
    received = bytearray()
    while True:
        data = await reader.read(_READ)
        if not data:
            raise ConnectionError("the peer closed the connection")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived) and ev.stream_id == stream_id:
                for name, value in ev.headers:
                    seen[bytes(name)] = bytes(value)
                status = int(seen.get(b":status", b"0") or 0)
                if not want_body and isinstance(ev, h2.events.ResponseReceived):
                    return status, seen, b""
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == stream_id:
                received += (ev.data or b"")[: max_body - len(received)]
                conn.acknowledge_received_data(ev.flow_controlled_length or 0, stream_id)
                if len(received) >= max_body:
                    return status, seen, bytes(received)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream_id:
                return status, seen, bytes(received)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == stream_id:
                raise ConnectionError(f"the peer reset the stream ({getattr(ev.error_code, 'name', ev.error_code)})")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ConnectionError(f"the peer sent GOAWAY ({getattr(ev.error_code, 'name', ev.error_code)})")
        writer.write(conn.data_to_send())


def _base(method: bytes, scheme: str, authority: str, path: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method), (b":scheme", scheme.encode()), (b":authority", authority.encode()), (b":path", path),
        (b"user-agent", b"portcullis-health"),
    ]  # fmt: skip


async def h2_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str, authority: str, path: str,
    max_body: int, want_body: bool,
) -> tuple[int, bytes]:
    """A GET of `path`: (status, body when `want_body`)."""
    fields = _base(b"GET", scheme, authority, path.encode())
    status, _, body = await _request(reader, writer, fields, b"", max_body, want_body)
    return status, body


async def grpc_check(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str, authority: str, service: str
) -> tuple[bool, str]:
    """grpc.health.v1.Health/Check for `service`: (serving, reason)."""
    name = service.encode()
    # HealthCheckRequest{service} (the schema keeps the name under 128 bytes: a one-byte length)
    message = b"\x0a" + bytes([len(name)]) + name if name else b""
    fields = [*_base(b"POST", scheme, authority, _GRPC_CHECK), (b"content-type", b"application/grpc"),
              (b"te", b"trailers")]  # fmt: skip
    body = b"\x00" + struct.pack(">I", len(message)) + message
    status, seen, answer = await _request(reader, writer, fields, body, 1024, True)
    grpc_status = seen.get(b"grpc-status", b"?").decode("latin-1")
    if status != 200 or grpc_status != "0":
        return False, f"gRPC health check answered HTTP {status}, grpc-status {grpc_status}"
    if answer[5:] != _SERVING:
        return False, "gRPC health check: not SERVING"
    return True, "gRPC health check: SERVING"
