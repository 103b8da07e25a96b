"""Sticky sessions: a cookie the proxy sets keeps a client on the peer it first got."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from portcullis.engine.messages import Headers

if TYPE_CHECKING:
    from portcullis.engine.context import RequestContext
    from portcullis.upstream.group import Peer, UpstreamGroup


def sticky_token(peer: Peer) -> str:
    """The cookie value that pins a client to `peer` (a hash, so peer addresses stay private)."""
    return hashlib.blake2b(peer.key.encode(), digest_size=8).hexdigest()


def add_sticky_cookie(ctx: RequestContext, group: UpstreamGroup, peer: Peer, headers: Headers) -> None:
    """Set the cookie unless the client already carries the right one."""
    sticky = group.sticky
    assert sticky is not None
    token = sticky_token(peer)
    if group.sticky_peer(ctx) is peer:
        return
    cookie = f"{sticky.cookie}={token}; Path=/; HttpOnly; SameSite=Lax"
    if sticky.max_age is not None:
        cookie += f"; Max-Age={int(sticky.max_age)}"
    headers.append((b"Set-Cookie", cookie.encode()))
