"""Shared helpers of the developer bootstrap: loopback ports, process checks, file locks, errors."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"

FORCE_EMBEDDED_DB_ENV = "PANDAES_FORCE_EMBEDDED_DB"  # not a [db] key: config.load() would reject it

class InfraError(RuntimeError):
    """The broker, the database server or the topics could not be set up; the message says which."""


def redact(url: str) -> str:
    """``url`` without its password, for log lines."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port (cheaper than a Kafka client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or LOOPBACK, int(port)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie (an orphan whose reaper is slow, or
    absent in a container, lingers as one after it died)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: checks without sending anything
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust kill(0)
    return state not in ("Z", "X")


def tail_file(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last lines of a log written since ``offset``, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing a state directory (e.g. two test runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that started it exits.

    Tansu keeps nothing on disk, so a broker orphaned by a kill -9'd owner would only be a leak.
    libc is resolved here, before the fork: the child of a threaded process must not dlopen.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG



Log = Callable[[str], Any]
