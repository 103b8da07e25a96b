"""A log file of lines: buffered, flushed by the worker's timer, reopened on SIGUSR1.

The access log is one; the WAF audit logs are others, shared per path by every filter of the
process that names it (`shared`), so two routes never open the same file twice.
"""

from __future__ import annotations

import contextlib
import sys
from typing import IO

_FLUSH_AT = 64 * 1024


class LogFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._buffer: list[str] = []
        self._size = 0
        self._stream: IO[str] = self._open()

    def _open(self) -> IO[str]:
        if self.path == "stdout":
            return sys.stdout
        if self.path == "stderr":
            return sys.stderr
        return open(self.path, "a", encoding="utf-8")

    def write_line(self, line: str) -> None:
        """`line` ends with a newline; it reaches the file at the next flush."""
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        try:
            self._stream.write("".join(self._buffer))
            self._stream.flush()
        except OSError:
            pass  # a full disk must not take the proxy down; the lines are dropped
        self._buffer.clear()
        self._size = 0

    def reopen(self) -> None:
        """Open the path again (logrotate moved the file); if that fails the old file stays."""
        self.flush()
        if self._stream not in (sys.stdout, sys.stderr):
            fresh = self._open()
            self._stream.close()
            self._stream = fresh

    def close(self) -> None:
        self.flush()
        if self._stream not in (sys.stdout, sys.stderr):
            self._stream.close()


# path -> (the open file, how many holders)
_SHARED: dict[str, tuple[LogFile, int]] = {}


def acquire_shared(path: str) -> LogFile:
    """The process's one LogFile for `path`, opened by its first holder."""
    entry = _SHARED.get(path)
    log = LogFile(path) if entry is None else entry[0]
    _SHARED[path] = (log, 1 if entry is None else entry[1] + 1)
    return log


def release_shared(log: LogFile) -> None:
    """A holder is done with it; the last one closes the file."""
    entry = _SHARED.get(log.path)
    if entry is None or entry[0] is not log:
        return
    if entry[1] <= 1:
        del _SHARED[log.path]
        log.close()
    else:
        _SHARED[log.path] = (log, entry[1] - 1)


def flush_shared() -> None:
    for log, _ in _SHARED.values():
        log.flush()


def reopen_shared() -> None:
    for log, _ in _SHARED.values():
        with contextlib.suppress(OSError):  # the directory is gone: the old file stays
            log.reopen()
