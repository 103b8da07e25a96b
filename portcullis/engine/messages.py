"""Response messages passed between the engine and the filters."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


class ResponseHead:
    """The head of a response on its way to the client; filters may edit `headers` in place."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers

    def get(self, name: bytes) -> bytes | None:
        """First value of a header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def remove(self, name: bytes) -> None:
        self.headers[:] = [(k, v) for k, v in self.headers if k.lower() != name]

    def set(self, name: bytes, value: bytes) -> None:
        self.remove(name.lower())
        self.headers.append((name, value))


class Response:
    """A complete response made by the proxy itself (errors, redirects, fixed answers)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
