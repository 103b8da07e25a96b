"""Which modules the build compiles with mypyc (setup.py), and which of them run compiled here.

The modules every proxied HTTP/1.1 request runs through, and the WAF's evaluation of a request.
A module compiled is a C extension built from the same source; when it is missing (a pure
install, `PORTCULLIS_PURE=1`), the source runs as it is. This file imports nothing but the
standard library: setup.py reads it before the package's dependencies are installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

COMPILED = (
    "portcullis.engine.context",
    "portcullis.engine.exchange",
    "portcullis.engine.forwarding",
    "portcullis.engine.outbox",
    "portcullis.engine.upstream_side",
    "portcullis.features.waf.actions",
    "portcullis.features.waf.audit",
    "portcullis.features.waf.bodies",
    "portcullis.features.waf.cache",
    "portcullis.features.waf.engine",
    "portcullis.features.waf.filter",
    "portcullis.features.waf.fold",
    "portcullis.features.waf.gate",
    "portcullis.features.waf.literals",
    "portcullis.features.waf.loader",
    "portcullis.features.waf.operators",
    "portcullis.features.waf.persist",
    "portcullis.features.waf.replay",
    "portcullis.features.waf.request",
    "portcullis.features.waf.response",
    "portcullis.features.waf.ruleset",
    "portcullis.features.waf.screens",
    "portcullis.features.waf.seclang",
    "portcullis.features.waf.tail",
    "portcullis.features.waf.transaction",
    "portcullis.features.waf.transforms",
    "portcullis.features.waf.variables",
    "portcullis.http.h1",
    "portcullis.observability.access_log",
    "portcullis.observability.log_file",
    "portcullis.observability.stats",
    "portcullis.routing.router",
    "portcullis.server.edge",
    "portcullis.server.h1",
    "portcullis.upstream.connection",
    "portcullis.upstream.pool",
    "portcullis.worker.runtime",
)


def _extension(name: str) -> str | None:
    """The file a module is (or would be) loaded from, when it is an extension module."""
    spec = importlib.util.find_spec(name)  # the loaded module's own spec, once it is imported
    origin = spec.origin if spec is not None else None
    return origin if origin is not None and origin.endswith(_SUFFIXES) else None


def running_compiled() -> list[str]:
    """The modules of `COMPILED` that are loaded from an extension module, not from source."""
    return [name for name in COMPILED if _extension(name) is not None]


def stale(names: tuple[str, ...] = COMPILED) -> list[str]:
    """Modules whose compiled form is older than their source: edited since the last build, so
    what runs is not what the source says (rebuild with `pip install -e .`)."""
    out = []
    for name in names:
        built = _extension(name)
        if built is None:
            continue
        source = os.path.join(os.path.dirname(built), name.rpartition(".")[2] + ".py")
        if os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(built):
            out.append(name)
    return out
