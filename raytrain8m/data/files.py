"""Where the data lies: globs over local paths and URIs (gs://, s3://, file://) via pyarrow.fs.

Tests (and on-prem mirrors) can serve a URI scheme from another filesystem through the exact
code path that production uses: `register_filesystem("gs", SubTreeFileSystem(tmp, LocalFileSystem()))`
makes `gs://bucket/dir/train*.tfrecord` read `tmp/bucket/dir/train*.tfrecord`. The registry is
consulted before `pyarrow.fs.FileSystem.from_uri`. It is per process: Ray Data read tasks receive
the filesystem object itself, so they need no registration of their own.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import re
from typing import NamedTuple, Sequence

import pyarrow.fs as pafs

from raytrain8m.data.schema import DataError

_REGISTRY: dict[str, pafs.FileSystem] = {}
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
_GLOB_CHARS = set("*?[")


def register_filesystem(scheme: str, filesystem: pafs.FileSystem) -> None:
    """Serve `scheme://bucket/path` from `filesystem` at `bucket/path`."""
    _REGISTRY[scheme.lower()] = filesystem


def unregister_filesystem(scheme: str) -> None:
    _REGISTRY.pop(scheme.lower(), None)


def resolve(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    text = os.fspath(path_or_uri)
    match = _URI.match(text)
    if match is None:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme in _REGISTRY:
        return _REGISTRY[scheme], rest.strip("/")
    if scheme == "file":
        return pafs.LocalFileSystem(), "/" + rest.lstrip("/")
    try:
        return pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as error:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(text, None, f"no filesystem for this URI: {error}") from error


def _has_glob(part: str) -> bool:
    return any(c in _GLOB_CHARS for c in part)


def _expand_one(filesystem: pafs.FileSystem, path: str, shown: str) -> list[str]:
    parts = path.split("/")
    first_glob = next((i for i, part in enumerate(parts) if _has_glob(part)), None)
    if first_glob is None:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            return _usable([info])
        if info.type == pafs.FileType.Directory:  # a directory means its .tfrecord files
            selector = pafs.FileSelector(path, recursive=False)
            return _usable(sorted((i for i in filesystem.get_file_info(selector)
                                   if i.type == pafs.FileType.File and i.path.endswith(".tfrecord")),
                                  key=lambda i: i.path))
        raise DataError(shown, None, "no such file or directory")
    base = "/".join(parts[:first_glob]) or ("/" if path.startswith("/") else "")
    recursive = len(parts) - first_glob > 1
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive))
    except FileNotFoundError:
        infos = []
    matched = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        candidate = info.path.split("/")
        if len(candidate) == len(parts) and all(
                fnmatch.fnmatchcase(c, p) for c, p in zip(candidate[first_glob:], parts[first_glob:])):
            matched.append(info)
    return _usable(sorted(matched, key=lambda i: i.path))


def _usable(infos: list[pafs.FileInfo]) -> list[str]:
    """Paths of the files; an empty file is no TFRecord file (it holds no record), so say so now."""
    for info in infos:
        if info.size == 0:
            raise DataError(info.path, None, "empty file (0 bytes): no records")
    return [info.path for info in infos]


def expand(glob_or_list: str | Sequence[str]) -> tuple[pafs.FileSystem, list[str]]:
    """(filesystem, sorted file paths inside it) for a glob, path, URI or a list of them.

    Every pattern must match at least one file, and all must live on one filesystem.
    """
    patterns = [glob_or_list] if isinstance(glob_or_list, (str, os.PathLike)) else list(glob_or_list)
    if not patterns:
        raise DataError(None, None, "no data files given")
    filesystem, files = None, []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        fs, path = resolve(pattern)
        if filesystem is None:
            filesystem = fs
        elif fs.type_name != filesystem.type_name:
            raise DataError(pattern, None, f"on a different filesystem ({fs.type_name}) than "
                                           f"the first pattern ({filesystem.type_name})")
        found = _expand_one(fs, path, pattern)
        if not found:
            raise DataError(pattern, None, "glob matches no file")
        files.extend(found)
    return filesystem, list(dict.fromkeys(files))


IDENTITY_BYTES = 1 << 16  # hashed from the head and from the tail of each file


def file_identity(filesystem: pafs.FileSystem, path: str) -> dict[str, object]:
    """What a cached result of reading `path` is keyed by: size, modification time (ns; None where
    the filesystem has none) and a SHA-1 of the first and last 64 KiB. A file replaced at the same
    path, even with the same size, gets another identity."""
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise DataError(path, None, "no such file")
    digest = hashlib.sha1()
    with filesystem.open_input_file(path) as handle:
        digest.update(handle.read(IDENTITY_BYTES))
        if info.size > IDENTITY_BYTES:
            handle.seek(max(IDENTITY_BYTES, info.size - IDENTITY_BYTES))
            digest.update(handle.read())
    return {"size": info.size, "mtime_ns": info.mtime_ns, "head_tail_sha1": digest.hexdigest()}


def identity_changes(old: dict | None, new: dict) -> str:
    """Why two identities differ, in words ('' when they are the same)."""
    if old is None:
        return "no record of the input it was made from"
    changed = [key for key in new if old.get(key) != new[key]]
    return ", ".join(f"{key} {old.get(key)} -> {new[key]}" if key != "head_tail_sha1" else "content changed"
                     for key in changed)


class FileSplit(NamedTuple):
    """Training files and held-out validate files, on one filesystem."""

    filesystem: pafs.FileSystem
    train: list[str]
    holdout: list[str]


def split_files(train_glob: str | Sequence[str], validate_glob: str | Sequence[str],
                holdout: int, seed: int = 0) -> FileSplit:
    """The paper's split: hold out `holdout` validate files (a seeded random choice, so the same
    on every run), train on the other validate files plus all train files."""
    filesystem, train = expand(train_glob)
    _, validate = expand(validate_glob)
    if not 0 <= holdout <= len(validate):
        raise DataError(str(validate_glob), None,
                        f"cannot hold out {holdout} of {len(validate)} validate files")
    held = sorted(random.Random(seed).sample(validate, holdout))
    rest = [path for path in validate if path not in set(held)]
    return FileSplit(filesystem, train + rest, held)
