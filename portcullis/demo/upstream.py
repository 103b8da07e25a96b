"""A tiny upstream that describes the request it received, so a newcomer sees the proxy work."""

from __future__ import annotations

import asyncio
import json
from html import escape

from portcullis.http.simple_server import SimpleRequest, SimpleResponse, start_simple_server

_PAGE = """<!doctype html><html><head><title>Portcullis demo upstream</title></head>
<body><h1>Hello through Portcullis</h1>
<p>This page comes from the demo upstream behind the proxy. The request it received:</p>
<pre>{request}</pre></body></html>
"""


async def describe(request: SimpleRequest) -> SimpleResponse:
    doc = {
        "method": request.method,
        "target": request.target,
        "headers": request.headers,
        "body_bytes": len(request.body),
    }
    text = json.dumps(doc, indent=2)
    if "text/html" in request.headers.get("accept", ""):
        return SimpleResponse(200, _PAGE.format(request=escape(text)).encode(), "text/html; charset=utf-8")
    return SimpleResponse(200, (text + "\n").encode(), "application/json", {"Server": "portcullis-demo"})


async def start_demo_upstream(host: str = "127.0.0.1", port: int = 8081) -> asyncio.Server:
    return await start_simple_server(describe, host, port)
