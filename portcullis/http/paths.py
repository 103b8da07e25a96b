"""Request path normalisation, so routes see the path an upstream will serve.

Without it `/public/../admin` would miss an `/admin` route and reach an upstream that
resolves it to `/admin` anyway. Like nginx, dot-segments are resolved (RFC 3986 5.2.4, with
`%2e` counted as a dot) and repeated slashes merged; what cannot be resolved (`/..` above
the root) stays at the root.
"""

from __future__ import annotations

import re

_SUSPECT = re.compile(r"//|/\.|%2[eE]")
_ENCODED_DOT = re.compile(r"%2[eE]")


def needs_normalizing(path: str) -> bool:
    return _SUSPECT.search(path) is not None


def normalize_path(path: str) -> str:
    if not needs_normalizing(path):
        return path
    path = _ENCODED_DOT.sub(".", path)
    out: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        elif segment == "" and not last:
            continue  # merge repeated slashes
        else:
            out.append(segment)
    return "/" + "/".join(out)
