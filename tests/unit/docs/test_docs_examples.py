"""Every YAML example in docs/ is a config the loader accepts, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portcullis.config import load_config_text

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for index, block in enumerate(_BLOCK.findall(page.read_text())):
            found.append((f"{page.name}#{index}", block))
    return found


def test_every_page_has_an_example() -> None:
    pages = {name.split("#")[0] for name, _ in _examples()}
    assert pages == {p.name for p in DOCS.glob("*.md")} | {"README.md"}


@pytest.mark.parametrize(("name", "text"), _examples(), ids=[n for n, _ in _examples()])
def test_example_loads(name: str, text: str, tmp_path: Path) -> None:
    config = load_config_text(text, name, str(tmp_path))
    assert config.listeners
