"""Listening sockets, bound once by the master and shared with the workers.

A listener is a group of `shards` sockets on one address (SO_REUSEPORT), and every worker serves
all of them. The kernel spreads new connections over the group; the event loop accepts at most
one connection per socket in each turn (libuv since 1.45), so a group of eight accepts up to
eight per turn. Under a new connection per request, that shares each turn's fixed costs (the
poll, waking the peers) among several connections."""

from __future__ import annotations

import socket
import sys

from portcullis.config.units import parse_address

BACKLOG = 1024
SHARDING = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
"""Only Linux spreads connections over a SO_REUSEPORT group; elsewhere a listener is one socket."""


class BindError(Exception):
    pass


def bind_listener(address: str, shards: int = 1) -> list[socket.socket]:
    """The listening group for `address`. Refused if anything listens there already, even a
    socket that would let the group share the address."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    share = SHARDING and shards > 1  # one socket is bound alone, as without shards
    try:
        if share:
            # a group's sockets may share the address with any socket of the same user that asks
            # to: a plain bind first makes sure no such socket (a second proxy) is there already
            _bind(family, host, port, share=False).close()
        return _bind_more([], family, host, port, shards if share else 1, share)
    except OSError as exc:
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


def resize_listener(group: list[socket.socket], address: str, shards: int) -> list[socket.socket]:
    """The group a reload keeps for `address`, with `shards` sockets: the first ones of `group`,
    and more bound next to them if it asks for more. (Sockets left out are the caller's to close.)"""
    if not SHARDING:
        return group
    if shards <= len(group):
        return group[:shards]
    if not group[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        raise BindError(
            f"cannot listen on {address} with {shards} shards: it was bound with one, alone (restart to change it)"
        )
    host, port = parse_address(address)
    try:
        return _bind_more(list(group), group[0].family, host, port, shards, True)
    except OSError as exc:
        raise BindError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


def _bind_more(
    group: list[socket.socket], family: int, host: str, port: int, size: int, share: bool
) -> list[socket.socket]:
    fresh: list[socket.socket] = []
    try:
        while len(group) + len(fresh) < size:
            sock = _bind(family, host, port, share)
            fresh.append(sock)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in fresh:
            sock.close()
        raise
    return group + fresh


def _bind(family: int, host: str, port: int, share: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
