"""The request lifecycle's named phases, in the order they run."""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    ROUTE = 1
    ADMIT = 2
    AUTHENTICATE = 3
    AUTHORIZE = 4
    LIMIT = 5
    INSPECT = 6
    CACHE_LOOKUP = 7
    SELECT_UPSTREAM = 8
    FORWARD = 9
    UPSTREAM_RESPONSE = 10
    CACHE_STORE = 11
    RESPOND = 12
    LOG = 13
