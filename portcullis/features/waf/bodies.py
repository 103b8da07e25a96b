"""Request body processors: URL-encoded, JSON (flattened like ModSecurity 3), multipart, XML.

Each returns what it found as plain data; the transaction turns it into collections.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from portcullis.features.waf.transforms import url_decode

Pairs = list[tuple[str, str]]


def parse_urlencoded(text: str) -> Pairs:
    """`a=1&b=2`: names and values URL-decoded (`+` is a space), empty pieces skipped."""
    if "%" in text:
        return [(url_decode(n), url_decode(v)) for n, _, v in [p.partition("=") for p in text.split("&") if p]]
    # nothing to decode but `+`, which is neither `&` nor `=`: replaced in the whole text at once
    return [(n, v) for n, _, v in [p.partition("=") for p in text.replace("+", " ").split("&") if p]]


class BodyError(ValueError):
    pass


def parse_json(text: str) -> Pairs:
    """Flatten as ModSecurity 3 does: `json.a.b` for objects, `json.a.array_0` for arrays."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"JSON parsing error: {exc}") from None
    out: Pairs = []

    def walk(prefix: str, node: object, depth: int) -> None:
        if depth > 100:
            raise BodyError("JSON nested too deeply")
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value, depth + 1)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(f"{prefix}.array_{index}", value, depth + 1)
        elif node is None:
            out.append((prefix, ""))
        elif isinstance(node, bool):
            out.append((prefix, "true" if node else "false"))
        else:
            out.append((prefix, str(node)))

    walk("json", doc, 0)
    return out


@dataclass
class Multipart:
    args: Pairs = field(default_factory=list)
    files: Pairs = field(default_factory=list)  # (field name, file name)
    files_sizes: Pairs = field(default_factory=list)
    part_headers: Pairs = field(default_factory=list)  # (field name, "Header: value")
    strict_error: bool = False
    unmatched_boundary: bool = False
    error: str = ""
    flags: dict[str, bool] = field(default_factory=dict)


_BOUNDARY = re.compile(r"boundary\s*=\s*(\"[^\"]*\"|[^;,\s]+)", re.I)
_DISP_PARAM = re.compile(r";\s*([a-zA-Z*]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;]*)")


def multipart_boundary(content_type: str) -> str | None:
    m = _BOUNDARY.search(content_type)
    if not m:
        return None
    value = m.group(1)
    return value[1:-1] if value.startswith('"') else value


def parse_multipart(body: str, content_type: str) -> Multipart:
    result = Multipart()
    boundary = multipart_boundary(content_type)
    if not boundary:
        result.error = "Multipart: boundary missing"
        result.strict_error = True
        return result
    delimiter = "--" + boundary
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        result.error = "Multipart: no boundaries found"
        result.strict_error = True
        return result
    if chunks[0].strip():
        result.flags["data_before"] = True
    ended = False
    for chunk in chunks[1:]:
        if chunk.startswith("--"):
            ended = True
            if chunk[2:].strip():
                result.flags["data_after"] = True
            break
        if not chunk.startswith("\r\n") and not chunk.startswith("\n"):
            result.unmatched_boundary = True
            continue
        part = chunk[2:] if chunk.startswith("\r\n") else chunk[1:]
        head, sep, data = part.partition("\r\n\r\n")
        if not sep:
            head, sep, data = part.partition("\n\n")
            if sep:
                result.flags["lf_line"] = True
            else:
                result.strict_error = True
                continue
        if data.endswith("\r\n"):
            data = data[:-2]
        elif data.endswith("\n"):
            data = data[:-1]
        name: str | None = None
        filename: str | None = None
        headers: list[str] = []
        for line in re.split(r"\r?\n", head):
            if not line:
                continue
            headers.append(line)
            hname, _, hvalue = line.partition(":")
            if hname.strip().lower() == "content-disposition":
                if not hvalue.strip().lower().startswith("form-data"):
                    result.strict_error = True
                for key, val in _DISP_PARAM.findall(hvalue):
                    if val.startswith('"') and val.endswith('"') and len(val) >= 2:
                        val = val[1:-1].replace('\\"', '"')
                    elif "'" in val or '"' in val:
                        result.flags["invalid_quoting"] = True
                    key = key.lower()
                    if key == "name":
                        name = val
                    elif key in ("filename", "filename*"):
                        filename = val
        if name is None:
            result.strict_error = True
            name = ""
        for line in headers:
            result.part_headers.append((name, line))
        if filename is not None:
            result.files.append((name, filename))
            result.files_sizes.append((name, str(len(data))))
        else:
            result.args.append((name, data))
    if not ended:
        result.flags["missing_end"] = True
        result.strict_error = True
    if result.flags.get("data_before") or result.flags.get("data_after") or result.flags.get("invalid_quoting"):
        result.strict_error = True
    return result


def parse_xml(body: str) -> tuple[str, list[str]]:
    """(all text content for `XML:/*`, attribute values for `XML://@*`)."""
    if "<!ENTITY" in body.upper():
        raise BodyError("XML: entity declarations are not allowed")
    try:
        root = ET.fromstring(body.encode("latin-1"))
    except (ET.ParseError, ValueError) as exc:
        raise BodyError(f"XML parsing error: {exc}") from None
    text = "".join(root.itertext())
    attrs = [value for el in root.iter() for value in el.attrib.values()]
    return text, attrs
