"""raytrain8m.runtime.atomic: a reader sees the old version or the new one, never a part; concurrent
writers never share a temporary; a failed or killed writer leaves the old version as it was."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from raytrain8m.records.predictions import PredictionStore
from raytrain8m.runtime import atomic

ROOT = Path(__file__).resolve().parents[1]


def _siblings(path: Path) -> list[str]:
    """What stands beside `path` in its directory, `path` itself left out."""
    return sorted(name for name in os.listdir(path.parent) if name != path.name)


def test_an_error_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "record.json"
    atomic.write_json(path, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic.staged_file(path, "w") as out:
            out.write('{"version": 2, "half": ')
            out.flush()
            raise RuntimeError("the writer fails half way")
    with pytest.raises(TypeError):
        atomic.write_text(path, 123)  # fails inside the write, after the file was opened
    assert path.read_text() == '{\n  "version": 1\n}\n'
    assert _siblings(path) == []


def test_an_error_mid_write_leaves_the_old_directory(tmp_path):
    path = tmp_path / "checkpoint"
    with atomic.staged_dir(path) as staging:
        (staging / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(path) as staging:
            (staging / "weights").write_text("new")
            (staging / "state.json").write_text("{")
            raise RuntimeError("the writer fails half way")
    assert sorted(os.listdir(path)) == ["weights"] and (path / "weights").read_text() == "old"
    with atomic.staged_dir(path) as staging:
        (staging / "state.json").write_text("{}")
    assert sorted(os.listdir(path)) == ["state.json"]  # replaced whole, not merged
    assert _siblings(path) == []


def test_concurrent_writers_never_mix_or_truncate_a_file(tmp_path):
    path = tmp_path / "shared.bin"
    size, rounds = 4 << 20, 12
    atomic.write_bytes(path, b"0" * size)
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    done = threading.Event()

    def write(byte: bytes) -> None:
        try:
            for _ in range(rounds):
                atomic.write_bytes(path, byte * size)
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)

    def read() -> None:
        while True:
            last = done.is_set()
            data = path.read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                errors.append(AssertionError(f"a reader saw {len(data)} bytes of {sorted(set(data))!r}"))
                return
            seen.add(data[:1])
            if last:  # one read after the writers finished
                return

    writers = [threading.Thread(target=write, args=(byte,)) for byte in (b"a", b"b")]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert not errors, errors
    assert path.read_bytes() in (b"a" * size, b"b" * size)
    assert seen & {b"a", b"b"}  # the reader read the writers' versions, not only the first
    assert _siblings(path) == []


def test_concurrent_writers_of_one_directory_each_install_a_whole_one(tmp_path):
    path = tmp_path / "export"
    errors: list[BaseException] = []
    both_writing = threading.Barrier(2, timeout=20)

    def write(name: str) -> None:
        try:
            for round_ in range(10):
                with atomic.staged_dir(path) as staging:
                    (staging / "weights").write_text(f"{name}{round_}")
                    both_writing.wait()  # the two writers' blocks overlap, every round
                    (staging / f"{name}.json").write_text(f"{name}{round_}")
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)
            both_writing.abort()

    threads = [threading.Thread(target=write, args=(name,)) for name in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    names = sorted(os.listdir(path))
    assert names in (["weights", "x.json"], ["weights", "y.json"])  # one writer's directory, whole
    assert (path / "weights").read_text() == (path / names[1]).read_text()
    assert _siblings(path) == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from raytrain8m.runtime import atomic
target = Path(sys.argv[1])
if sys.argv[2] == "file":
    with atomic.staged_file(target, "wb") as out:
        out.write(b"x" * (1 << 20))
        out.flush()
        print("ready", flush=True)
        time.sleep(60)
else:
    with atomic.staged_dir(target) as staging:
        (staging / "weights").write_text("half")
        print("ready", flush=True)
        time.sleep(60)
"""


def _killed_writer(target: Path, kind: str) -> None:
    """A writer killed (SIGKILL: no cleanup runs) in the middle of writing `target`."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), kind], stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_killed_writer_leaves_the_old_version_and_does_not_block_the_next(tmp_path, kind):
    target = tmp_path / "out"
    if kind == "file":
        atomic.write_text(target, "old\n")
    else:
        with atomic.staged_dir(target) as staging:
            (staging / "weights").write_text("old")
    old = tmp_path / ("out" if kind == "file" else "out/weights")
    for _ in range(2):  # two killed writers: neither one's leftover is in the other's or the next one's way
        _killed_writer(target, kind)
        assert old.read_text() == ("old\n" if kind == "file" else "old")
    assert len(_siblings(target)) == 2  # what the killed writers left, beside the target, hidden
    assert all(name.startswith(".out.tmp-") for name in _siblings(target))
    if kind == "file":
        atomic.write_text(target, "next\n")
        assert target.read_text() == "next\n"
    else:
        with atomic.staged_dir(target) as staging:
            (staging / "weights").write_text("next")
        assert (target / "weights").read_text() == "next"
    assert len(_siblings(target)) == 2


def test_a_staged_file_through_a_pyarrow_filesystem(tmp_path):
    from pyarrow import fs

    path = str(tmp_path / "shard.tfrecord")
    atomic.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic.staged_file(path, "wb", fs.LocalFileSystem()) as out:
            out.write(b"new, half")
            raise RuntimeError("the writer fails half way")
    assert Path(path).read_bytes() == b"old" and _siblings(Path(path)) == []
    with atomic.staged_file(path, "wb", fs.LocalFileSystem()) as out:
        out.write(b"new")
    assert Path(path).read_bytes() == b"new" and _siblings(Path(path)) == []


def test_symlink_replaces_a_link_in_one_step(tmp_path):
    link = tmp_path / "ray_logs"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    atomic.symlink(link, tmp_path / "one", target_is_directory=True)
    atomic.symlink(link, tmp_path / "two", target_is_directory=True)
    assert os.readlink(link) == str(tmp_path / "two")
    assert sorted(os.listdir(tmp_path)) == ["one", "ray_logs", "two"]


def test_a_failed_prediction_writer_leaves_no_part_files(tmp_path):
    labels = np.eye(4, dtype=np.int8)
    store = PredictionStore.from_arrays(tmp_path / "store", [np.full((4, 4), 0.5, np.float32)], labels)
    before = sorted(os.listdir(store.path))
    with pytest.raises(RuntimeError):
        with store.writer("late") as writer:
            writer.add(np.full((4, 4), 0.25, np.float32), labels, ["0", "1", "2", "3"])
            raise RuntimeError("the member fails half way")
    assert sorted(os.listdir(store.path)) == before
    assert PredictionStore(store.path).members == ["0"]
