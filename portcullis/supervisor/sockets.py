"""Listening sockets, bound once by the master and shared with the workers."""

from __future__ import annotations

import socket

from portcullis.config.units import parse_address

BACKLOG = 1024


class BindError(Exception):
    pass


def bind_listener(address: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock
