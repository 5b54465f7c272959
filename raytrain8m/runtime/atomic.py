"""Every file and directory the project writes is put in place here, all or nothing.

A writer fills a temporary sibling with a name of its own (`.{name}.tmp-<pid>-<random>`), so
concurrent writers never share one, and renames it over the target only when it is complete:
a reader sees the old version or the new one, never a part, and a writer that fails or is
killed leaves the old version as it was. Standard library only (data/ and numpy-only tools
import it).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

P = TypeVar("P", str, Path)


def sibling(path: P, kind: str = "tmp") -> P:
    """A name beside `path` that no other writer uses: `.{name}.{kind}-<pid>-<random>`."""
    head, name = os.path.split(os.fspath(path))
    unique = os.path.join(head, f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
    return unique if isinstance(path, str) else Path(unique)


class staged_file:
    """An open file at a unique sibling of `path`, put at `path` only by `commit()` (or by leaving
    its with-block without an error); `discard()` (or an error) removes it and `path` is untouched.

    `filesystem` (a pyarrow FileSystem, `path` in its terms) writes through it instead of the
    local one; its final move is what the filesystem offers (a copy on object stores) and it
    is not fsync'd."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", filesystem: Any = None):
        self.path, self.filesystem = path, filesystem
        self.temporary = sibling(path if isinstance(path, str) else Path(path))
        if filesystem is None:
            self.file = open(self.temporary, mode)
        else:
            self.file = filesystem.open_output_stream(self.temporary, compression=None)

    def commit(self) -> None:
        try:
            if self.filesystem is None:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.temporary, self.path)
            else:
                self.file.close()
                self.filesystem.move(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        try:
            self.file.close()
        except Exception:  # a close that fails (disk full) changes nothing: the file goes anyway
            pass
        try:
            if self.filesystem is None:
                os.unlink(self.temporary)
            else:
                self.filesystem.delete_file(self.temporary)
        except OSError:
            pass

    def __enter__(self):
        return self.file

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`path` holds `data`, or (on any error) what it held before."""
    with staged_file(path, "wb") as out:
        out.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text`, or (on any error) what it held before."""
    with staged_file(path, "w") as out:
        out.write(text)


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2, **dumps: Any) -> None:
    """`path` holds `payload` as JSON and a newline, or (on any error) what it held before."""
    write_text(path, json.dumps(payload, indent=indent, **dumps) + "\n")


def symlink(path: str | os.PathLike, target: str | os.PathLike, target_is_directory: bool = False) -> None:
    """`path` is a symbolic link to `target`, replacing what was at `path` in one step."""
    temporary = sibling(Path(path))
    try:
        temporary.symlink_to(target, target_is_directory=target_is_directory)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A new directory at a unique sibling of `path`, put at `path` when the block exits without
    an error (an existing `path` is moved aside, then removed), removed otherwise."""
    path = Path(path)
    staging = sibling(path)
    staging.mkdir()
    try:
        yield staging
        _install(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _install(staging: Path, path: Path, attempts: int = 5) -> None:
    """Rename `staging` to `path`: what is there is moved aside first and removed after. Another
    writer's version installed in between (the rename finds `path` taken) is moved aside in turn."""
    for attempt in range(attempts):
        old = sibling(path, "old")
        try:
            os.rename(path, old)
        except FileNotFoundError:
            old = None
        try:
            os.rename(staging, path)
        except OSError as error:
            if old is not None:
                try:
                    os.rename(old, path)  # the old version back where it was
                except OSError:
                    _remove(old)  # another writer's version is there: the old one is superseded
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and attempt + 1 < attempts:
                continue
            raise
        if old is not None:
            _remove(old)
        return


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
