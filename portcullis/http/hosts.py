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

_valid: set[bytes] = set()
_names: dict[bytes, str] = {}


def valid_host(value: bytes) -> bool:
    """Whether a Host field value (or a request target's authority) is well-formed."""
    if value in _valid:
        return True
    if _HOST.fullmatch(value) is None:
        return False
    if len(_valid) >= _MEMO_MAX:
        _valid.clear()
    _valid.add(value)
    return True


def host_name(authority: bytes) -> str:
    """The lower-case host of a (well-formed, non-empty) authority, without its port."""
    name = _names.get(authority)
    if name is None:
        if authority.startswith(b"["):
            name = authority[: authority.find(b"]") + 1].decode("latin-1").lower()
        else:
            name = authority.partition(b":")[0].decode("latin-1").lower()
        if len(_names) >= _MEMO_MAX:
            _names.clear()
        _names[authority] = name
    return name
