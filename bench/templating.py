"""Config templates under bench/templates/ and the nginx-specific bits of rendering them.

Templates use ``{{name}}`` placeholders so that nginx's own ``$variables`` and braces need
no escaping. Rendering fails loudly on a placeholder left unfilled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"

SMALL_BODY_SIZE = 100
LARGE_BODY_SIZE = 64 * 1024

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class TemplateError(ValueError):
    pass


def render(text: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}`` in text; an unknown name is an error."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise TemplateError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def render_file(name: str, values: dict[str, str]) -> str:
    return render((TEMPLATES / name).read_text(encoding="utf-8"), values)


def small_body() -> str:
    """A fixed 100-byte ASCII body that is safe inside an nginx double-quoted string."""
    line = "portcullis-bench small response "
    body = (line * (SMALL_BODY_SIZE // len(line) + 1))[:SMALL_BODY_SIZE]
    assert len(body.encode()) == SMALL_BODY_SIZE
    return body


def large_body() -> bytes:
    return bytes(range(256)) * (LARGE_BODY_SIZE // 256)


# --------------------------------------------------------------------------- nginx binary

def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_build_info(nginx: str) -> str:
    """``nginx -V`` output (it goes to stderr)."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10, check=False)
    return out.stderr + out.stdout


def nginx_version(build_info: str) -> str:
    match = re.search(r"nginx version: (\S+)", build_info)
    return match.group(1) if match else "nginx (unknown version)"


def temp_path_directives(build_info: str, tmpdir: Path) -> str:
    """Point every temp path nginx creates at startup into tmpdir.

    nginx mkdir()s the compiled-in temp paths (e.g. /var/lib/nginx/body) when it starts and
    fails if the parent is missing, so a self-contained run has to override all of them.
    Modules compiled out are skipped since their directives would be unknown.
    """
    lines = [f"    client_body_temp_path {tmpdir / 'client_body'};"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in build_info:
            lines.append(f"    {module}_temp_path {tmpdir / module};")
    return "\n".join(lines)


def user_directive() -> str:
    # As root, nginx would switch its worker to "nobody", which cannot read a mkdtemp()
    # directory; keep the worker as the current user instead. Otherwise nginx ignores it.
    return "user root;" if os.geteuid() == 0 else ""


def nginx_values(build_info: str, tmpdir: Path) -> dict[str, str]:
    return {
        "tmpdir": str(tmpdir),
        "user": user_directive(),
        "temp_paths": temp_path_directives(build_info, tmpdir),
    }


def nginx_argv(nginx: str, tmpdir: Path, conf: Path) -> list[str]:
    return [nginx, "-p", f"{tmpdir}/", "-c", str(conf), "-g", "daemon off;"]
