"""A rules file as a :class:`~graylb.admin.RuleStore`: what a canary guard's rollback writes to
when the rules come from a file (:class:`~graylb.rules.sources.FileRuleSource`).

The key is the file's path; a version is the SHA-256 of its content. ``cas_put`` holds an
exclusive ``flock`` on ``<path>.lock`` across compare and write, and writes through a temporary
file and ``os.replace``: processes on one machine sharing the file write once, and readers never
see half a document.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import GraylbError
from ..instance import Instance

__all__ = ["FileRuleStore"]


class FileRuleStore:
    def __enter__(self) -> FileRuleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self, key: str) -> str:
        return f"rules file '{key}'"

    def describe_version(self, version: str) -> str:
        return f"sha256 {version[:12]}" if version else "absent"

    def get(self, key: str) -> tuple[str | None, str]:
        try:
            text = Path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, ""
        return text, hashlib.sha256(text.encode("utf-8")).hexdigest()

    def put(self, key: str, value: str) -> None:
        _write_atomically(Path(key), value)

    def cas_put(self, key: str, value: str, version: str) -> bool:
        with _locked(Path(key)):
            if self.get(key)[1] != version:
                return False
            _write_atomically(Path(key), value)
            return True

    def instances(self, service: str) -> tuple[list[tuple[str, Instance]], list[str]]:
        raise GraylbError("a rules file holds no instances: ask the registry (graylb status --consul / --nacos)")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
