"""Load a YAML config into a validated :class:`Config`, reporting every problem at once.

The YAML is composed (not constructed) so every node keeps its line; the plain data built from
it records the line of each mapping key and sequence item by path. Schema errors from pydantic
and the cross-reference checks are then reported against those lines as ``FILE:LINE: KEY: REASON``.
"""

from __future__ import annotations

import os
import types
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from portcullis.config.checks import check_config
from portcullis.config.errors import (
    ROOT_KEY,
    ConfigError,
    ConfigIssue,
    Locations,
    Path,
    did_you_mean,
    sort_issues,
)
from portcullis.config.schema import Config

__all__ = ["load_config", "load_config_text"]

MAX_NODES = 250_000
"""Values allowed after expanding aliases (stops "billion laughs" documents)."""
MAX_DEPTH = 64
"""Nesting allowed; real configs stay under ten levels."""

_YAML = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE = _YAML + "map", _YAML + "seq", _YAML + "merge"
_KINDS = {_YAML + "int": "integer", _YAML + "float": "number", _YAML + "bool": "boolean"}
_SCALAR_TAGS = {_YAML + t for t in ("null", "bool", "int", "float", "str", "binary", "timestamp")}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse, validate and cross-check the config file at ``path``; raise ConfigError."""
    filename = os.fsdecode(path)
    try:
        with open(filename, "rb") as fh:
            raw = fh.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([ConfigIssue(filename, 1, ROOT_KEY, f"cannot read the file: {reason}")]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        issue = ConfigIssue(filename, line, ROOT_KEY, f"the file is not UTF-8 text (byte {exc.start})")
        raise ConfigError([issue]) from exc
    base_dir = os.path.dirname(os.path.abspath(filename))
    return load_config_text(text, filename, base_dir)


def load_config_text(text: str, filename: str, base_dir: str) -> Config:
    """Parse, validate and cross-check config ``text``; relative paths resolve against ``base_dir``.

    Raises ConfigError (and nothing else) listing every problem, sorted by line.
    """
    try:
        return _load(text, filename, base_dir)
    except ConfigError:
        raise
    except Exception as exc:  # a last line of defence: the fuzz tests check it never fires
        reason = f"internal error while loading the config: {exc!r}"
        raise ConfigError([ConfigIssue(filename, 1, ROOT_KEY, reason)]) from exc


def _load(text: str, filename: str, base_dir: str) -> Config:
    locations = Locations(filename)
    builder = _Builder(locations)
    data = builder.build(text)
    issues = list(builder.issues)
    if not isinstance(data, dict):
        raise ConfigError(sort_issues(issues))
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues += schema_issues(exc.errors(include_url=False), data, locations, builder.reported)
        raise ConfigError(sort_issues(issues)) from None
    issues += check_config(config, locations, base_dir)
    if issues:
        raise ConfigError(sort_issues(issues))
    return config


# --------------------------------------------------------------------------- YAML -> data + lines

class _TooLarge(Exception):
    pass


class _Builder:
    """Turns a composed YAML node tree into plain data, recording lines and structural problems."""

    def __init__(self, locations: Locations) -> None:
        self.locations = locations
        self.issues: list[ConfigIssue] = []
        self.reported: list[Path] = []
        """Paths already reported here; schema errors at or under them would only repeat them."""
        self._count = 0
        self._active: set[int] = set()
        self._loader: yaml.SafeLoader | None = None

    def _issue(self, path: Path, line: int, reason: str, *, bad_value: bool = False) -> None:
        self.issues.append(self.locations.issue(path, reason, line=line))
        if bad_value:
            self.reported.append(path)

    def build(self, text: str) -> object:
        """The document as plain data, or None after recording why there is none."""
        node = self._compose(text)
        if node is None:
            return None
        line = node.start_mark.line + 1
        self.locations.record((), line)
        if isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "null":
            self._issue((), 1, "the file is empty")
            return None
        if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
            self._issue((), line, f"the top level must be a mapping of keys, not {_node_kind(node)}")
            return None
        try:
            return self._value(node, (), 0)
        except _TooLarge:
            self._issue((), line, f"the document is too large (more than {MAX_NODES} values with aliases)")
            return None

    def _compose(self, text: str) -> yaml.Node | None:
        line, reason = 1, "the file is empty"
        try:
            self._loader = yaml.SafeLoader(text)
            try:
                node: yaml.Node | None = self._loader.get_single_node()
            finally:
                self._loader.dispose()
            if node is not None:
                return node
        except yaml.composer.ComposerError as exc:
            if exc.problem_mark is not None:
                line = exc.problem_mark.line + 1
            reason = str(exc.problem)
            if "another document" in reason:
                reason = "the file holds more than one YAML document"
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            reason = f"YAML syntax error: {exc.problem or exc.context}"
            if exc.context and exc.context_mark is not None and exc.problem:
                reason += f" ({exc.context} at line {exc.context_mark.line + 1})"
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            reason = f"character {chr(exc.character)!r} is not allowed in YAML"
        except yaml.YAMLError as exc:
            reason = f"YAML error: {exc}"
        except RecursionError:
            reason = "the document is nested too deeply"
        self._issue((), line, reason)
        return None

    def _tick(self) -> None:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLarge

    def _value(self, node: yaml.Node, path: Path, depth: int) -> object:
        self._tick()
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            self._issue(path, line, f"nested more than {MAX_DEPTH} levels deep", bad_value=True)
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._issue(path, line, "an alias refers to a value that contains it", bad_value=True)
            return None
        if node.tag != (_MAP if isinstance(node, yaml.MappingNode) else _SEQ):
            self._issue(path, line, f"unsupported YAML tag {_tag(node.tag)!r}", bad_value=True)
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, depth)
            items: list[object] = []
            for index, item in enumerate(node.value):
                self.locations.record((*path, index), item.start_mark.line + 1)
                items.append(self._value(item, (*path, index), depth + 1))
            return items
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> object:
        line = node.start_mark.line + 1
        if node.tag not in _SCALAR_TAGS:
            self._issue(path, line, f"unsupported YAML tag {_tag(node.tag)!r}", bad_value=True)
            return None
        assert self._loader is not None
        try:
            return self._loader.construct_object(node, deep=True)
        except Exception:
            kind = _KINDS.get(node.tag, _tag(node.tag))
            self._issue(path, line, f"{_short(node.value)} is not a valid {kind}", bad_value=True)
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, object]:
        self._tick()
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        merges: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                merges.extend(self._merge_sources(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(path, line, "a mapping key must be a plain value, not a list or mapping")
                continue
            key = str(key_node.value)
            if key in first_line:
                self._issue((*path, key), line, f"duplicate key {key!r} (first at line {first_line[key]})")
                continue
            first_line[key] = line
            self.locations.record((*path, key), line)
            result[key] = self._value(value_node, (*path, key), depth + 1)
        for source in merges:  # explicit keys win, then earlier merged mappings
            self._active.add(id(source))
            try:
                merged = self._mapping(source, path, depth)
            finally:
                self._active.discard(id(source))
            for key, value in merged.items():
                result.setdefault(key, value)
        return result

    def _merge_sources(self, node: yaml.Node, path: Path) -> list[yaml.MappingNode]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = [n for n in nodes if isinstance(n, yaml.MappingNode) and n.tag == _MAP]
        if len(sources) != len(nodes) or any(id(n) in self._active for n in sources):
            line = node.start_mark.line + 1
            self._issue((*path, "<<"), line, "a merge (<<) needs a mapping or a list of mappings")
            return []
        return sources


def _tag(tag: str) -> str:
    return tag.replace(_YAML, "!!", 1)


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return f"a value tagged {_tag(node.tag)!r}"
    return f"the value {_short(node.value)}"


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# --------------------------------------------------------------------------- pydantic errors -> issues

def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The alternatives of a union (None left out), or just ``[tp]``."""
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(tp) if a is not type(None)]
    return [tp]


def _is_model(tp: object) -> TypeGuard[type[BaseModel]]:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model(tp: Any) -> type[BaseModel] | None:
    members = _members(tp)
    return members[0] if len(members) == 1 and _is_model(members[0]) else None


def _type_tags(model: object) -> tuple[object, ...]:
    """The values of a filter model's ``type`` tag (empty for anything else)."""
    if not _is_model(model):
        return ()
    field = model.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return ()
    return get_args(field.annotation)


def _child(tp: Any, part: str | int) -> Any:
    """The type found at ``part`` inside a value of type ``tp`` (None when unknown)."""
    model = _model(tp)
    if model is not None:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    members = _members(tp)
    if len(members) != 1:
        return None
    origin, args = get_origin(members[0]), get_args(members[0])
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _step(value: object, part: str | int) -> tuple[bool, object]:
    """(found, the item) for a key of a mapping or an index of a list."""
    if isinstance(value, dict) and part in value:
        return True, value[part]
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return True, value[part]
    return False, None


def _walk(err: ErrorDetails, data: object) -> tuple[Path, Any, object]:
    """Map a pydantic ``loc`` to a document path; also the type and the data of its container."""
    loc = err["loc"]
    tp: Any = Config
    cur: object = data
    parent: object = None
    parent_tp: Any = None
    path: list[str | int] = []
    for i, part in enumerate(loc):
        if part == "[key]":
            break
        members = _members(tp) if tp is not None else []
        if len(members) > 1:  # pydantic names the union member tried, e.g. "redirect", "int"
            tp = next((m for m in members if part in _type_tags(m)), None)
            continue
        found, item = _step(cur, part)
        if found:
            parent, parent_tp, cur, tp = cur, tp, item, _child(tp, part)
        elif i == len(loc) - 1 and err["type"] == "missing":
            parent, parent_tp, cur, tp = cur, tp, None, _child(tp, part)
        else:
            break
        path.append(part)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return (*path, "type"), tp, cur
    return tuple(path), parent_tp, parent


def _describe(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "an empty value", True: "true", False: "false"}[value]
    if isinstance(value, int | float | str):
        return _short(value)
    return "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "none_required": "an empty value",
}
_LIMITS = {
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "greater_than_equal": "must be at least {ge}", "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}", "less_than": "must be less than {lt}",
}


def _reason(err: ErrorDetails, path: Path, container_tp: Any, container: object) -> tuple[str | None, str]:
    """(what was expected, or None; the full reason) for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return None, "required key is missing"
    if kind == "extra_forbidden":
        model = _model(container_tp)
        if model is None and isinstance(container, dict):  # a filter: pick the model by its type
            tag = container.get("type")
            model = next((m for m in _members(container_tp) if tag in _type_tags(m)), None)
        known = list(model.model_fields) if model is not None else []
        return None, "unknown key" + did_you_mean(str(err["loc"][-1]), known)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = [str(t) for m in _members(container_tp) for t in _type_tags(m)]
        choices = ", ".join(tags)
        tag = ctx.get("tag")
        if kind == "union_tag_not_found" or tag is None:
            return None, f"required key is missing: the filter type, one of {choices}"
        hint = did_you_mean(str(tag), tags)
        return None, f"unknown type {_short(tag)} (expected one of: {choices})" + hint
    if kind in ("value_error", "assertion_error"):
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        return None, msg
    expected = _EXPECTED.get(kind)
    hint = ""
    if kind == "literal_error":
        expected = str(ctx.get("expected", "one of the allowed values"))
        field_tp = _strip(_child(container_tp, path[-1])) if path else None
        if get_origin(field_tp) is Literal and isinstance(value, str):
            hint = did_you_mean(value, [str(v) for v in get_args(field_tp)])
    if expected is not None:
        return expected, f"expected {expected}, got {_describe(value)}{hint}"
    try:
        return None, _LIMITS[kind].format_map(ctx)
    except (KeyError, IndexError, ValueError):
        return None, err["msg"]


def schema_issues(
    errors: list[ErrorDetails], data: object, locations: Locations, reported: list[Path]
) -> list[ConfigIssue]:
    """One issue per document path; errors from several union members at one path are merged."""
    found: dict[Path, list[tuple[str | None, str, object]]] = {}
    for err in errors:
        path, container_tp, container = _walk(err, data)
        if any(path[: len(r)] == r for r in reported):
            continue
        expected, reason = _reason(err, path, container_tp, container)
        found.setdefault(path, []).append((expected, reason, err.get("input")))
    issues = []
    for path, reasons in found.items():
        unique = list(dict.fromkeys(r[1] for r in reasons))
        if len(reasons) > 1 and all(r[0] is not None for r in reasons):
            alternatives = " or ".join(dict.fromkeys(str(r[0]) for r in reasons))
            text = f"expected {alternatives}, got {_describe(reasons[0][2])}"
        else:
            text = "; ".join(unique)
        issues.append(locations.issue(path, text))
    return issues
