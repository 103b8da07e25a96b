"""Human units in config files: durations, sizes and addresses."""

from __future__ import annotations

import pytest

from portcullis.config.units import parse_address, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("0ms", 0.0),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2h", 7200.0),
        (" 10s ", 10.0),
        ("10 s", 10.0),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    result = parse_duration(text)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    ["", "10", "s", "ms", "-1s", "1d", "1 sec", "1S", "1MS", "1e3s", "1.s", ".5s", "1s2", "1h30m", "one s",
     None, [], {}, b"1s", True, False, -1, -0.5],
)  # fmt: skip
def test_parse_duration_errors(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_duration_error_messages_help() -> None:
    with pytest.raises(ValueError, match="250ms"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-3)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("0B", 0),
        ("64KiB", 64 * 1024),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("8k", 8192),
        ("8K", 8192),
        ("4M", 4 * 1024**2),
        ("1G", 1024**3),
        ("100", 100),
        (" 16 KiB ", 16384),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    result = parse_size(text)
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize(
    "bad",
    ["", "KiB", "1.5MiB", "-1KiB", "10kib", "10kb", "10TB", "10 XB", "1KiBs", "ten", None, 1.5, 1024.0, [],
     b"1KiB", True, False, -1],
)  # fmt: skip
def test_parse_size_errors(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_size_error_messages_help() -> None:
    with pytest.raises(ValueError, match="64KiB"):
        parse_size("big")
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:1", ("localhost", 1)),
        ("example.com:65535", ("example.com", 65535)),
        ("[::1]:8443", ("::1", 8443)),
        ("[2001:db8::10]:9000", ("2001:db8::10", 9000)),
        (":8080", ("0.0.0.0", 8080)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "bad",
    ["8080", "localhost", "localhost:", "host:0", "host:65536", "host:99999", "host:-1", "host:http", "host:80a",
     "host: 80", "", ":", 8080, None, ("127.0.0.1", 80), b"127.0.0.1:80"],
)  # fmt: skip
def test_parse_address_errors(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def test_parse_address_port_range_message() -> None:
    with pytest.raises(ValueError, match="1-65535"):
        parse_address("127.0.0.1:70000")


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_address, "127.0.0.1:\uff18\uff10\uff18\uff10"),
        (parse_size, "\uff16\uff14KiB"),
        (parse_duration, "\u0663s"),
    ],
    ids=["address", "size", "duration"],
)
def test_non_ascii_digits_are_refused(parse: object, text: str) -> None:
    assert callable(parse)
    with pytest.raises(ValueError):
        parse(text)
