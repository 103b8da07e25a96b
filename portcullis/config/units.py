"""Parsing of the human units used in config files: durations and sizes."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_FACTORS = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """`250ms`, `30s`, `5m`, `1h` (or a bare number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms or 30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 250ms or 30s")
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration (use e.g. 250ms, 30s, 5m, 1h)")
    return float(m.group(1)) * _DURATION_FACTORS[m.group(2)]


def parse_size(value: object) -> int:
    """`64KiB`, `10MiB`, `1GiB` (or a bare number of bytes) -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 64KiB or 10MiB")
    m = _SIZE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a size (use e.g. 512B, 64KiB, 10MiB, 1GiB)")
    return int(m.group(1)) * _SIZE_FACTORS[m.group(2)]


def parse_address(value: object) -> tuple[str, int]:
    """`127.0.0.1:8080`, `[::1]:8080`, `:8080` -> (host, port)."""
    if not isinstance(value, str):
        raise ValueError("expected an address such as 127.0.0.1:8080")
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{value!r} is not an address (use host:port, e.g. 127.0.0.1:8080)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or "0.0.0.0", port)


def parse_peer_url(url: str) -> tuple[str, str, str, int]:
    """`http://host:port` -> (scheme, `host:port`, host, port); the port defaults by scheme and an
    IPv6 host comes back without its brackets."""
    scheme, _, rest = url.partition("://")
    hostport = rest.rstrip("/")
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":443" if scheme == "https" else ":80"
    host, port = parse_address(hostport)
    return scheme, hostport, host, port
