"""Host and :authority values: their syntax check and the host name routing sees.

Both are pure functions of the bytes, and clients send the same few values on every request of
every connection, so each keeps a bounded memo shared by all connections: a new connection pays
a dict lookup, not a regex and a decode.
"""

from __future__ import annotations

import re
from typing import Final

# RFC 9110 7.2: uri-host [":" port], an IP literal or a reg-name (RFC 3986 3.2.2); no userinfo,
# path, spaces or the commas of a joined repeated Host
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")
_MEMO_MAX: Final = 1024

_names: dict[bytes, str] = {}
checked_names: Final[dict[bytes, str]] = {}
"""Well-formed Host values seen lately and their host names: the request path reads it inline."""


def checked_host_name(value: bytes) -> str | None:
    """The host name of a Host field value (or a request target's authority), None when the value
    is malformed (RFC 9110 7.2)."""
    name = checked_names.get(value)
    if name is None:
        if _HOST.fullmatch(value) is None:
            return None
        if len(checked_names) >= _MEMO_MAX:
            checked_names.clear()
        name = checked_names[value] = _name_of(value)
    return name


def host_name(authority: bytes) -> str:
    """The lower-case host of a (well-formed, non-empty) authority, without its port."""
    name = _names.get(authority)
    if name is None:
        if len(_names) >= _MEMO_MAX:
            _names.clear()
        name = _names[authority] = _name_of(authority)
    return name


def _name_of(authority: bytes) -> str:
    if authority.startswith(b"["):
        return authority[: authority.find(b"]") + 1].decode("latin-1").lower()
    return authority.partition(b":")[0].decode("latin-1").lower()
