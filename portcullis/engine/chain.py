"""Compile a route's filters once into per-hook tuples, in lifecycle order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from portcullis.engine.filter import Filter


def _overrides(flt: Filter, hook: str) -> bool:
    return getattr(type(flt), hook) is not getattr(Filter, hook)


@dataclass(frozen=True, slots=True)
class Chain:
    filters: tuple[Filter, ...]
    on_request: tuple[Callable[..., Any], ...]
    on_request_body: tuple[Callable[..., Any], ...]
    on_upstream_response: tuple[Callable[..., Any], ...]
    on_response: tuple[Callable[..., Any], ...]
    on_response_body: tuple[Callable[..., Any], ...]
    on_log: tuple[Callable[..., Any], ...]
    holds_body: bool = False
    """A filter needs the whole request body before the request is forwarded."""
    edits_responses: bool = False
    """A filter sees or changes a peer's response head or body (else it is forwarded as it is)."""
    holds_response: bool = False
    """A filter may hold the response head back with the body (Filter.holds_response)."""


def compile_chain(filters: Sequence[Filter]) -> Chain:
    """Order filters by phase (stable: same phase keeps the written order) and keep only the
    hooks each one implements. Response hooks run in reverse, so the outermost filter sees the
    response last, as in a middleware stack."""
    ordered = tuple(sorted(filters, key=lambda f: f.phase))

    def hooks(name: str, reverse: bool = False) -> tuple[Callable[..., Any], ...]:
        seq = reversed(ordered) if reverse else iter(ordered)
        return tuple(getattr(f, name) for f in seq if _overrides(f, name))

    on_upstream_response = hooks("on_upstream_response", reverse=True)
    on_response = hooks("on_response", reverse=True)
    on_response_body = hooks("on_response_body", reverse=True)
    return Chain(
        filters=ordered,
        on_request=hooks("on_request"),
        on_request_body=hooks("on_request_body"),
        on_upstream_response=on_upstream_response,
        on_response=on_response,
        on_response_body=on_response_body,
        on_log=hooks("on_log"),
        holds_body=any(f.needs_request_body for f in ordered),
        edits_responses=bool(on_upstream_response or on_response or on_response_body),
        holds_response=any(f.holds_response for f in ordered),
    )


EMPTY_CHAIN = compile_chain(())
