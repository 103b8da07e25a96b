"""Config problems and where they are: every one is reported as ``FILE:LINE: KEY: REASON``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

Path = tuple[str | int, ...]
"""A place in the config document: mapping keys and sequence indexes, e.g. ("routes", 0, "name")."""

ROOT_KEY = "(top level)"
"""The KEY printed for problems that concern the whole file rather than one key."""


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """Every problem found in one config, at once."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def format_path(path: Path) -> str:
    """("routes", 0, "match", "host") -> "routes[0].match.host"; () -> the top-level marker."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or ROOT_KEY


class Locations:
    """The line of every mapping key and sequence item, by path, for one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._lines: dict[Path, int] = {}

    def record(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    def __contains__(self, path: Path) -> bool:
        return path in self._lines

    def line(self, path: Path) -> int:
        """The line of ``path``, or of its nearest recorded parent (1 when nothing is known)."""
        for end in range(len(path), -1, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def issue(self, path: Path, reason: str, *, line: int | None = None) -> ConfigIssue:
        return ConfigIssue(self.file, self.line(path) if line is None else line, format_path(path), reason)


def sort_issues(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """By line, then key; exact repeats dropped."""
    return sorted(set(issues), key=lambda i: (i.file, i.line, i.key, i.reason))


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to ``word``, if any is close enough to be what was meant."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest of ``choices``, or ""."""
    close = closest(word, choices)
    return f"; did you mean {close!r}?" if close is not None else ""
