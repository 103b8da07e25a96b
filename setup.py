"""Build hook: the modules every proxied request runs through are compiled with mypyc.

mypyc turns the type-annotated source into C extension modules; the Python source stays the
one truth (it is what mypy checks, and what runs when nothing is compiled). Compiled, the
HTTP/1.1 request path costs about half the CPU time it costs interpreted (bench/README.md).

`PORTCULLIS_PURE=1 pip install .` installs without compiling. A build without mypyc or without
a working C compiler installs pure Python too, and says so. `portcullis version` tells which.
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# the list, read without importing the package (its dependencies are not installed yet)
COMPILED = runpy.run_path(os.path.join(HERE, "portcullis", "compiled.py"))["COMPILED"]

# The build checks these files with mypy's defaults, not the strict settings of pyproject.toml: an
# isolated build has none of the dependencies installed, and the strict checks (made by
# `scripts/test`) would fail on their missing types. Compiling needs the types, not the strictness.
MYPY_FLAGS = ["--config-file=", "--ignore-missing-imports", "--python-version=3.11"]


class PureIfNoCompiler(build_ext):
    """A failed compile leaves the package as pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, a missing compiler ...
            print(f"portcullis: cannot compile ({exc}); installing pure Python", file=sys.stderr)


def ext_modules() -> list[object]:
    if os.environ.get("PORTCULLIS_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("portcullis: mypyc is not installed; installing pure Python", file=sys.stderr)
        return []
    paths = [name.replace(".", "/") + ".py" for name in COMPILED]
    return list(mypycify(MYPY_FLAGS + paths, opt_level="3", group_name="portcullis"))


setup(ext_modules=ext_modules(), cmdclass={"build_ext": PureIfNoCompiler})
