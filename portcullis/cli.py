"""The `portcullis` command: run, check, version."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

from portcullis import __version__
from portcullis.config import Config, ConfigError, load_config, load_config_text

DEFAULT_CONFIG_NAME = "<embedded default config>"


def _load(path: str | None) -> Config:
    if path is None:
        return load_config_text(_default_text(), DEFAULT_CONFIG_NAME, ".")
    return load_config(path)


def _default_text() -> str:
    return resources.files("portcullis").joinpath("default.yaml").read_text()


def cmd_check(args: argparse.Namespace) -> int:
    try:
        _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config or DEFAULT_CONFIG_NAME}: ok")
    return 0


def _warn_stale() -> None:
    from portcullis.compiled import stale

    old = stale()
    if old:
        names = ", ".join(old)
        print(f"portcullis: warning: compiled modules older than their source run: {names}", file=sys.stderr)
        print("portcullis: rebuild them with `pip install -e .` (or install with PORTCULLIS_PURE=1)", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    _warn_stale()
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    from portcullis.supervisor.master import run

    if args.config is None:
        return run(config, _default_text(), None, ".")
    path = os.path.abspath(args.config)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return run(config, text, path, os.path.dirname(path))


def cmd_version(args: argparse.Namespace) -> int:
    from portcullis.compiled import COMPILED, running_compiled

    compiled = len(running_compiled())
    how = f"{compiled} of {len(COMPILED)} hot-path modules compiled" if compiled else "pure Python"
    print(f"portcullis {__version__} ({how})")
    _warn_stale()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portcullis", description="A reverse proxy and security gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("-c", "--config", help="config file (default: the embedded demo config)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config file and print every problem")
    check.add_argument("-c", "--config", required=True, help="config file")
    check.set_defaults(func=cmd_check)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
