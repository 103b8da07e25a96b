"""Which modules the build compiles with mypyc (setup.py), and which of them run compiled here.

The modules every proxied HTTP/1.1 request runs through, and the WAF's evaluation of a request.
A module compiled is a C extension built from the same source; when it is missing (a pure
install, `PORTCULLIS_PURE=1`), the source runs as it is. This file imports nothing but the
standard library: setup.py reads it before the package's dependencies are installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os

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


def running_compiled() -> list[str]:
    """The modules of `COMPILED` that are loaded from an extension module, not from source."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in COMPILED if (importlib.import_module(name).__file__ or "").endswith(suffixes)]


def stale(names: tuple[str, ...] = COMPILED) -> list[str]:
    """Modules whose compiled form is older than their source: edited since the last build, so
    what runs is not what the source says (rebuild with `pip install -e .`)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(suffixes):
            continue
        source = os.path.join(os.path.dirname(origin), name.rpartition(".")[2] + ".py")
        if os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(origin):
            out.append(name)
    return out
