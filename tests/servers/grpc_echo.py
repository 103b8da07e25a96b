#!/usr/bin/env python3
"""A gRPC test server on grpcio, without generated stubs: generic handlers over raw bytes.

Run as a subprocess (so a test can kill it mid-call):

    python3 tests/servers/grpc_echo.py [--max-streams N] [--cert PEM --key PEM]

it prints one JSON line on stdout once it listens, {"port": N}, and serves until killed. Tests
that need no separate process call `start()`.

Methods of the service `test.Echo` (messages are plain bytes):
  Unary         b"echo:" + request, with the trailing metadata x-trail: yes;
                b"missing" fails with NOT_FOUND "no such thing"; b"sleep:S" waits S seconds, then
                answers the caller's address; b"meta" answers the request metadata as JSON
  Bidi          b"re:" + each request, as each arrives
  Download      request b"N:SIZE": N messages of SIZE bytes of the pattern
  Upload        JSON {"messages": n, "bytes": total, "sha256": ...} of every request message
and grpc.health.v1.Health/Check: SERVING for the services "" and "test.Echo", NOT_SERVING for
"down", NOT_FOUND for any other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

SERVICE = "test.Echo"
PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
        return context.peer().encode()
    if request == b"meta":
        return json.dumps({k: v for k, v in context.invocation_metadata() if isinstance(v, str)}).encode()
    context.set_trailing_metadata((("x-trail", "yes"),))
    return b"echo:" + request


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield b"re:" + request


def _download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, _, size = request.partition(b":")
    for _ in range(int(count)):
        yield pattern(int(size))


def _upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    digest = hashlib.sha256()
    messages = total = 0
    for request in requests:
        messages += 1
        total += len(request)
        digest.update(request)
    return json.dumps({"messages": messages, "bytes": total, "sha256": digest.hexdigest()}).encode()


def _health(request: bytes, context: grpc.ServicerContext) -> bytes:
    service = request[2:] if request[:1] == b"\x0a" else b""  # HealthCheckRequest{service}
    if service in (b"", SERVICE.encode()):
        return b"\x08\x01"  # HealthCheckResponse{status: SERVING}
    if service == b"down":
        return b"\x08\x02"  # NOT_SERVING
    context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return b""


def start(max_streams: int = 0, cert: bytes | None = None, key: bytes | None = None) -> tuple[grpc.Server, int]:
    """A running server on a free loopback port: (server, port)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    if max_streams:
        options.append(("grpc.max_concurrent_streams", max_streams))
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=options)
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Download": grpc.unary_stream_rpc_method_handler(_download),
        "Upload": grpc.stream_unary_rpc_method_handler(_upload),
    })  # fmt: skip
    health = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(_health)}
    )
    server.add_generic_rpc_handlers((handler, health))
    if cert is not None and key is not None:
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-streams", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    cert = open(args.cert, "rb").read() if args.cert else None  # noqa: SIM115
    key = open(args.key, "rb").read() if args.key else None  # noqa: SIM115
    server, port = start(args.max_streams, cert, key)
    print(json.dumps({"port": port}), flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
