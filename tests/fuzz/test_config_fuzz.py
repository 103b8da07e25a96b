"""Fuzzing the config loader: any text gives a Config or a ConfigError, never anything else."""

from __future__ import annotations

import typing
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from portcullis.config import Config, ConfigError, load_config_text
from portcullis.config.errors import ROOT_KEY


def _schema_keys(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Every field name of ``model`` and the models inside it."""
    if model in seen:
        return set()
    seen.add(model)
    keys = set(model.model_fields)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                keys |= _schema_keys(tp, seen)
            stack.extend(typing.get_args(tp))
    return keys


KEYS = sorted(_schema_keys(Config, set()))
SCALARS = [
    "30s", "250ms", "5 minutes", "64KiB", "10 MiB", "-1", "auto", "127.0.0.1:8080", ":0", "[::1]:443",
    "http://127.0.0.1:9001", "ftp://x", "http://", "/", "/v1/", "*.example.com", "(", "a{99999999999}",
    "headers", "rewrite", "redirect", "respond", "round_robin", "GET", "X-Id", "Bad Header", "1.3",
    "web", "app", "certs/site.pem", "\x00", "~", "", "10.0.0.0/8", "300.0.0.1/99",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(SCALARS), st.sampled_from(KEYS),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.text(max_size=10))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=40,
)


def check(text: str) -> None:
    """The loader's contract: a Config, or a ConfigError whose issues are well formed."""
    try:
        config = load_config_text(text, "fuzz.yaml", "/nonexistent-portcullis-base")
    except ConfigError as exc:
        assert exc.issues, "a ConfigError must carry at least one issue"
        lines = [issue.line for issue in exc.issues]
        assert lines == sorted(lines)
        for issue in exc.issues:
            assert issue.file == "fuzz.yaml"
            assert issue.line >= 1
            assert issue.key and issue.reason
            assert "internal error" not in issue.reason, str(issue)
            assert str(issue).startswith(f"fuzz.yaml:{issue.line}: ")
        return
    assert isinstance(config, Config)


def dump(data: object) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True, default_flow_style=None)
    except (yaml.YAMLError, ValueError):
        return ""


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(st.sampled_from([
    "listeners:", "  - name: web", "    listen: 127.0.0.1:8080", "routes:", "  - {name: r, upstream: app}",
    "upstreams:", "  app: {peers: [{url: 'http://127.0.0.1:9001'}]}", "- &a [*a]", "<<: *a", "a: &a {b: 1}",
    "  <<: [*a, {c: 2}]", "x: !!int nope", "y: !!binary '!'", "z: !tag 1", "? [complex, key]", ": value",
    "---", "...", "%YAML 1.1", "'unterminated", "\t- tab", "key: [1, {2: 3}", "  filters: [{type: nope}]",
    "workers: auto", "workers: -3", "name: web", "name: web", "2001-01-01: date", "on: yes",
]), max_size=12))
def test_yaml_fragments(lines: list[str]) -> None:
    check("\n".join(lines) + "\n")


@FUZZ
@given(documents)
def test_random_structures(data: object) -> None:
    check(dump(data))


GOOD: dict[str, Any] = {
    "workers": 1,
    "listeners": [{"name": "web", "listen": "127.0.0.1:8080"}],
    "upstreams": {"app": {"peers": [{"url": "http://127.0.0.1:9001"}]}},
    "routes": [
        {"name": "api", "match": {"path_prefix": "/v1/"}, "upstream": "app",
         "filters": [{"type": "rewrite", "strip_prefix": "/v1"}]},
        {"name": "hi", "filters": [{"type": "respond", "body": "hi"}]},
    ],
}


def _paths(data: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


@FUZZ
@given(st.data())
def test_mutated_good_config(data: st.DataObject) -> None:
    assert isinstance(load_config_text(dump(GOOD), "good.yaml", "/"), Config)
    doc: Any = yaml.safe_load(dump(GOOD))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
            if data.draw(st.booleans()):
                parent[data.draw(keys)] = data.draw(documents)
        else:
            parent[path[-1]] = data.draw(documents)
    check(dump(doc))


def test_root_key_marker_is_used_for_file_level_problems() -> None:
    try:
        load_config_text("", "empty.yaml", "/")
    except ConfigError as exc:
        assert [issue.key for issue in exc.issues] == [ROOT_KEY]
    else:
        raise AssertionError("an empty file must not load")
