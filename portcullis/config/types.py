"""The value types of the config schema: human units, addresses, header names, and the strict base model."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from portcullis.config.units import parse_address, parse_duration, parse_size


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a duration must be a finite number")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_finite)]
Size = Annotated[int, BeforeValidator(parse_size)]


_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")


def _address(value: object) -> str:
    host, port = parse_address(value)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not an IP address or host name") from None
        return f"{host}:{port}"
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


Address = Annotated[str, BeforeValidator(_address)]


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from exc


Cidr = Annotated[str, AfterValidator(_cidr)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _header_name(value: str) -> str:
    if not TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid header name")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("header values cannot contain CR, LF or NUL")
    return value


HeaderValue = Annotated[str, AfterValidator(_header_value)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
