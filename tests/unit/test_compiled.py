"""The build compiles the request path (setup.py); `portcullis version` and `run` tell about it."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portcullis import cli
from portcullis.compiled import COMPILED, running_compiled, stale


@pytest.mark.skipif(bool(os.environ.get("PORTCULLIS_PURE")), reason="installed as pure Python on purpose")
def test_the_installed_build_runs_the_request_path_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    # the benchmarks' figures are for this build: a pure install here means the compile failed
    assert running_compiled() == list(COMPILED)
    assert cli.main(["version"]) == 0
    assert f"({len(COMPILED)} of {len(COMPILED)} hot-path modules compiled)" in capsys.readouterr().out


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """A package `fresh` with a module `mod` as a build leaves it: its source and an extension
    file beside it (never imported here: only found)."""
    pkg = tmp_path / "fresh"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    (pkg / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    sys.path.insert(0, str(tmp_path))
    yield pkg
    sys.path.remove(str(tmp_path))
    for name in ("fresh.mod", "fresh"):
        sys.modules.pop(name, None)


def test_a_module_edited_after_the_build_is_stale(package: Path) -> None:
    source, built = package / "mod.py", package / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])
    os.utime(source, (1000, 1000))
    os.utime(built, (2000, 2000))
    assert stale(("fresh.mod",)) == []
    os.utime(source, (3000, 3000))
    assert stale(("fresh.mod",)) == ["fresh.mod"]


def test_a_pure_module_is_never_stale(package: Path) -> None:
    (package / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])).unlink()
    assert stale(("fresh.mod",)) == []


def test_a_stale_build_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("portcullis.compiled.stale", lambda: ["portcullis.http.h1"])
    assert cli.main(["version"]) == 0
    err = capsys.readouterr().err
    assert "compiled modules older than their source run: portcullis.http.h1" in err
    assert "pip install -e ." in err
