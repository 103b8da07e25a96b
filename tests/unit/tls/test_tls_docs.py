"""docs/tls.md's TLS listener examples (fenced ```yaml tls) name certificate files: they load
with the docs directory as the base, where docs/examples/ holds throw-away test certificates.
(The plain ```yaml blocks are loaded by tests/unit/docs like every page's.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portcullis.config import load_config_text
from portcullis.tls.store import CertificateStore

DOCS = Path(__file__).resolve().parents[3] / "docs"
_BLOCKS = re.findall(r"```yaml tls\n(.*?)```", (DOCS / "tls.md").read_text(), re.S)


def test_there_are_tls_examples() -> None:
    assert len(_BLOCKS) >= 2


@pytest.mark.parametrize("text", _BLOCKS)
def test_tls_example_loads_and_builds(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config_text(text, "tls.md", str(DOCS))
    monkeypatch.chdir(DOCS)  # the worker opens the files relative to its working directory
    for listener in config.listeners:
        if listener.tls is not None:
            store = CertificateStore(listener.tls, ["h2", "http/1.1"])
            assert store.lookup("www.example.test") is store.entries[0].context
