"""raytrain8m.data: format round trips, TensorFlow interop, generator, loud bad inputs, Ray reads."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from raytrain8m.data import (
    DataError,
    ReadStats,
    decode_frame_record,
    decode_records,
    dequantize,
    encode_frame_example,
    encode_video_example,
    expand,
    generate,
    iter_batches,
    quantize,
    read_records,
    register_filesystem,
    split_files,
    to_model_inputs,
    unregister_filesystem,
    write_records,
)
from raytrain8m.data.examples import SequenceExample
from raytrain8m.data.schema import AUDIO_SIZE, FEATURE_SIZE, RGB_SIZE

CLASSES = 20  # tests/conftest.py SYNTHETIC


def frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, RGB_SIZE), dtype=np.uint8),
            rng.integers(0, 256, (n, AUDIO_SIZE), dtype=np.uint8))


def write_videos(path, videos) -> str:
    write_records(str(path), [encode_frame_example(*video) for video in videos])
    return str(path)


def test_dequantize_matches_the_official_formula_and_quantize_inverts_it():
    q = np.arange(256, dtype=np.uint8)
    # starter utils.Dequantize(max=2, min=-2): q * (4/255) + (4/512 - 2), in float32
    expected = q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    np.testing.assert_array_equal(dequantize(q), expected)
    assert dequantize(q).dtype == np.float32
    np.testing.assert_array_equal(quantize(dequantize(q)), q)
    np.testing.assert_array_equal(quantize(np.array([-9.0, 9.0])), [0, 255])


def test_frame_level_round_trip(tmp_path):
    rgb, audio = frames(7)
    path = write_videos(tmp_path / "a.tfrecord", [("vid1", [5, 2], rgb, audio),
                                                  ("vid2", [], rgb[:1], audio[:1])])
    batch = next(iter_batches(path, batch_size=8, num_classes=10))
    assert list(batch["id"]) == ["vid1", "vid2"]
    assert [list(labels) for labels in batch["labels"]] == [[5, 2], []]
    assert list(batch["num_frames"]) == [7, 1]
    assert batch["rgb"][0] == rgb.tobytes() and batch["audio"][1] == audio[:1].tobytes()
    features, num_frames, labels = to_model_inputs(batch, num_classes=10)
    assert features.shape == (2, 7, FEATURE_SIZE) and list(num_frames) == [7, 1]
    np.testing.assert_array_equal(features[0, :, :RGB_SIZE], dequantize(rgb))
    np.testing.assert_array_equal(features[0, :, RGB_SIZE:], dequantize(audio))
    assert not features[1, 1:].any()  # zero padding after the video's frames
    assert labels[0].nonzero()[0].tolist() == [2, 5] and not labels[1].any()
    padded, clipped, _ = to_model_inputs(batch, num_classes=10, max_frames=3)
    assert padded.shape == (2, 3, FEATURE_SIZE) and list(clipped) == [3, 1]


def test_video_level_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mean_rgb, mean_audio = rng.normal(size=RGB_SIZE), rng.normal(size=AUDIO_SIZE)
    write_records(str(tmp_path / "v.tfrecord"), [encode_video_example("v", [3], mean_rgb, mean_audio)])
    batch = next(iter_batches(str(tmp_path / "v.tfrecord"), 4, video_level=True))
    np.testing.assert_array_equal(batch["mean_rgb"][0], mean_rgb.astype(np.float32))
    features, num_frames, labels = to_model_inputs(batch, num_classes=4)
    assert features.shape == (1, 1, FEATURE_SIZE) and list(num_frames) == [1]
    assert labels.tolist() == [[0, 0, 0, 1]]


def test_generator_labels_are_topic_driven_skewed_and_never_empty(synthetic_dir, tmp_path):
    summary = json.loads((synthetic_dir / "synthetic.json").read_text())
    assert 2.5 <= summary["mean_labels_per_video"] <= 3.6
    for batch in iter_batches(str(synthetic_dir / "t*.tfrecord"), 64, num_classes=CLASSES):
        for video_id, labels, num_frames in zip(batch["id"], batch["labels"], batch["num_frames"]):
            assert 1 <= num_frames <= 12
            assert (len(labels) == 0) == video_id.startswith("te"), video_id  # only test is empty
    big = generate(str(tmp_path / "big"), videos=600, classes=60, max_frames=1, shards=1, seed=3,
                   progress=False)
    frequency = np.sort(big["label_frequency"])[::-1]
    assert frequency[0] >= 4 * np.median(frequency)  # Zipf-like: a few classes dominate


def test_generator_is_deterministic_for_a_seed(tmp_path):
    def shard_bytes(out, seed):
        generate(str(out), videos=30, classes=10, max_frames=5, shards=2, seed=seed, progress=False)
        return [p.read_bytes() for p in sorted(out.glob("*.tfrecord"))]

    first = shard_bytes(tmp_path / "a", 7)
    assert len(first) == 6
    assert first == shard_bytes(tmp_path / "b", 7)
    assert first != shard_bytes(tmp_path / "c", 8)


def test_label_noise_changes_only_train_labels_deterministically_and_zero_changes_nothing(tmp_path, capsys):
    from raytrain8m.commands import synth

    def generated(out, **noise):
        generate(str(out), videos=60, classes=10, max_frames=4, shards=1, seed=5, progress=False, **noise)
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}

    def videos(out, split):
        return [(i, sorted(labels), rgb, audio) for batch in iter_batches(str(out / f"{split}*.tfrecord"), 64)
                for i, labels, rgb, audio in zip(batch["id"], batch["labels"], batch["rgb"], batch["audio"])]

    clean = generated(tmp_path / "clean")
    assert generated(tmp_path / "zero", label_noise=0.0) == clean
    # the train shard the generator wrote before label_noise existed (commit 90fab85)
    assert hashlib.sha256(clean["train0000.tfrecord"]).hexdigest() == \
        "076c5eba5c4428382aa022709124fdd18e83d0e02e23b5597c9a0619458586d1"
    noisy = generated(tmp_path / "noisy", label_noise=0.5)
    assert noisy == generated(tmp_path / "again", label_noise=0.5)  # same seed, same noise
    assert synth.main(["--out", str(tmp_path / "cli"), "--videos", "60", "--classes", "10", "--max-frames", "4",
                       "--shards", "1", "--seed", "5", "--label-noise", "0.5"]) == 0
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "cli").glob("*.tfrecord"))} == noisy
    assert noisy["validate0000.tfrecord"] == clean["validate0000.tfrecord"]
    assert noisy["test0000.tfrecord"] == clean["test0000.tfrecord"]
    changed = 0
    for (i, labels, rgb, audio), (j, true, rgb0, audio0) in zip(videos(tmp_path / "noisy", "train"),
                                                                   videos(tmp_path / "clean", "train")):
        assert i == j and rgb == rgb0 and audio == audio0 and labels  # same frames, never unlabelled
        changed += labels != true
    assert changed >= 10  # about half the labels moved
    summary = json.loads((tmp_path / "noisy" / "synthetic.json").read_text())
    assert summary["label_noise"] == 0.5
    assert "label_noise" not in json.loads((tmp_path / "zero" / "synthetic.json").read_text())
    with pytest.raises(Exception, match="label_noise"):
        generate(str(tmp_path / "bad"), videos=10, classes=4, max_frames=2, shards=1, seed=0, label_noise=1.5)


def test_records_written_by_tensorflow_read_identically_and_ours_read_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rgb, audio = frames(4, seed=1)
    example = tf.train.SequenceExample()
    example.context.feature["id"].bytes_list.value.append(b"tfvid")
    example.context.feature["labels"].int64_list.value.extend([1, 3])
    for name, data in (("rgb", rgb), ("audio", audio)):
        for frame in data:
            example.feature_lists.feature_list[name].feature.add().bytes_list.value.append(frame.tobytes())
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        writer.write(example.SerializeToString())
    [(index, record)] = list(read_records(str(tmp_path / "tf.tfrecord")))
    row = decode_frame_record(record)
    assert (index, row["id"], row["labels"], row["num_frames"]) == (0, "tfvid", [1, 3], 4)
    assert row["rgb"] == rgb.tobytes() and row["audio"] == audio.tobytes()

    ours = write_videos(tmp_path / "ours.tfrecord", [("a", [1, 3], rgb, audio)])
    [serialized] = [r.numpy() for r in tf.data.TFRecordDataset(ours)]  # checks our CRCs too
    assert tf.train.SequenceExample.FromString(serialized) == example.__class__.FromString(
        encode_frame_example("a", [1, 3], rgb, audio))
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features={"labels": tf.io.VarLenFeature(tf.int64)},
        sequence_features={"rgb": tf.io.FixedLenSequenceFeature([], tf.string)})
    assert tf.sparse.to_dense(context["labels"]).numpy().tolist() == [1, 3]
    assert b"".join(sequence["rgb"].numpy().tolist()) == rgb.tobytes()


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    with pytest.raises(DataError, match="train\\*.tfrecord.*matches no file"):
        expand(str(tmp_path / "train*.tfrecord"))


def record_size(tmp_path) -> int:
    """Bytes of one framed record as `corrupt` writes it (4 equal-sized records a file)."""
    return len(Path(corrupt(tmp_path, "sizing.tfrecord", lambda d: d)).read_bytes()) // 4


def corrupt(tmp_path, name, mutate) -> str:
    """A file of 4 videos v0..v3 with 3 frames each, its bytes passed through `mutate`."""
    rgb, audio = frames(3)
    path = write_videos(tmp_path / name, [(f"v{i}", [1], rgb, audio) for i in range(4)])
    data = bytearray(Path(path).read_bytes())
    Path(path).write_bytes(bytes(mutate(data)))
    return path


def test_truncated_file_and_crc_failures_name_file_and_record(tmp_path):
    record = record_size(tmp_path)
    truncated = corrupt(tmp_path, "cut.tfrecord", lambda d: d[:3 * record + 100])
    with pytest.raises(DataError, match=r"cut.tfrecord, record 3: truncated") as error:
        list(iter_batches(truncated, 8))
    assert error.value.record == 3 and error.value.path.endswith("cut.tfrecord")

    def flip(offset):
        def mutate(data):
            data[offset] ^= 0xFF
            return data
        return mutate

    bad_data = corrupt(tmp_path, "data.tfrecord", flip(record + 50))
    with pytest.raises(DataError, match=r"data.tfrecord, record 1: data CRC mismatch"):
        list(iter_batches(bad_data, 8))
    bad_length = corrupt(tmp_path, "length.tfrecord", flip(2 * record + 1))
    with pytest.raises(DataError, match=r"length.tfrecord, record 2: length CRC"):
        list(iter_batches(bad_length, 8))


def test_skip_corrupt_counts_and_logs_instead_of_raising(tmp_path, caplog):
    record = record_size(tmp_path)

    def flip(data):
        data[record + 50] ^= 0xFF
        return data

    path = corrupt(tmp_path, "flip.tfrecord", flip)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):
        ids = [i for batch in iter_batches(path, 8, skip_corrupt=True, stats=stats)
               for i in batch["id"]]
    assert ids == ["v0", "v2", "v3"] and (stats.records, stats.skipped) == (3, 1)
    assert "flip.tfrecord, record 1: data CRC mismatch" in caplog.text


@pytest.mark.parametrize("video, num_classes, why", [
    (("v", [1], np.zeros((3, 1000), np.uint8), np.zeros((3, 128), np.uint8)), None,
     "rgb frame 0 has 1000 bytes, expected 1024"),
    (("v", [1], np.zeros((3, 1024), np.uint8), np.zeros((2, 128), np.uint8)), None,
     "3 rgb frames but 2 audio frames"),
    (("v", [1, 20], np.zeros((3, 1024), np.uint8), np.zeros((3, 128), np.uint8)), 20,
     "label 20 outside \\[0, 20\\)"),
])
def test_bad_records_raise_data_error_naming_file_and_record(tmp_path, video, num_classes, why):
    good = ("ok", [0], *frames(2))
    path = write_videos(tmp_path / "bad.tfrecord", [good, good, video])
    with pytest.raises(DataError, match=f"bad.tfrecord, record 2: {why}"):
        list(iter_batches(path, 2, num_classes=num_classes))
    stats = ReadStats()
    kept = list(decode_records(list(read_records(path, stats=stats)), path, num_classes,
                               skip_corrupt=True, stats=stats).column("id").to_pylist())
    assert kept == ["ok", "ok"] and stats.skipped == 1


def test_fast_wire_path_and_protobuf_path_agree_on_reordered_records(monkeypatch):
    rgb, audio = frames(4)
    record = encode_frame_example("v", [2, 9], rgb, audio)
    example = SequenceExample.FromString(record)
    # feature_lists before context, and an unknown field: legal protobuf, not our canonical layout
    context, lists = SequenceExample(), SequenceExample()
    context.context.CopyFrom(example.context)
    lists.feature_lists.CopyFrom(example.feature_lists)
    reordered = lists.SerializeToString() + b"\x18\x05" + context.SerializeToString()
    fast = decode_frame_record(record)
    assert decode_frame_record(reordered) == fast and fast["rgb"] == rgb.tobytes()
    monkeypatch.setattr("raytrain8m.data.examples._fast_decode", lambda record: None)
    assert decode_frame_record(reordered) == decode_frame_record(record) == fast


def test_wrong_frame_length_message_names_the_frame():
    rgb, audio = frames(5)
    record = encode_frame_example("v", [], rgb, audio)
    example = SequenceExample.FromString(record)
    example.feature_lists.feature_list["rgb"].feature[3].bytes_list.value[0] = bytes(1000)
    with pytest.raises(DataError, match="train0000.tfrecord, record 17: rgb frame 3 has 1000 bytes"):
        decode_frame_record(example.SerializeToString(), "train0000.tfrecord", 17)


@pytest.fixture
def gs_bucket(tmp_path, synthetic_dir):
    """gs://bucket/yt8m/ served from tmp_path/bucket/yt8m through the filesystem registry."""
    shutil.copytree(synthetic_dir, tmp_path / "bucket" / "yt8m")
    register_filesystem("gs", pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    yield "gs://bucket/yt8m"
    unregister_filesystem("gs")


def test_gs_path_reads_through_the_registered_filesystem(gs_bucket, synthetic_dir):
    filesystem, paths = expand(f"{gs_bucket}/train*.tfrecord")
    assert paths == ["bucket/yt8m/train0000.tfrecord", "bucket/yt8m/train0001.tfrecord"]
    remote = [i for b in iter_batches(f"{gs_bucket}/train*.tfrecord", 16) for i in b["id"]]
    local = [i for b in iter_batches(str(synthetic_dir / "train*.tfrecord"), 16) for i in b["id"]]
    assert remote == local and len(local) == 84
    with pytest.raises(DataError, match="gs://bucket/yt8m/nothing\\*: glob matches no file"):
        expand(f"{gs_bucket}/nothing*")


def test_split_files_holds_out_validate_files_deterministically(synthetic_dir):
    split = split_files(str(synthetic_dir / "train*.tfrecord"),
                        str(synthetic_dir / "validate*.tfrecord"), holdout=1, seed=0)
    assert len(split.holdout) == 1 and "validate" in split.holdout[0]
    assert len(split.train) == 3 and split.holdout[0] not in split.train
    assert split == split_files(str(synthetic_dir / "train*.tfrecord"),
                                str(synthetic_dir / "validate*.tfrecord"), holdout=1, seed=0)


def test_ray_dataset_shards_cover_every_record_once_and_feed_the_model(ray_session, synthetic_dir):
    import threading

    from raytrain8m.data.datasource import read_dataset

    glob = [str(synthetic_dir / "train*.tfrecord"), str(synthetic_dir / "validate*.tfrecord")]
    shards = read_dataset(glob, num_classes=CLASSES).streaming_split(2, equal=False)
    seen: list[list[str]] = [[], []]
    shapes: list[tuple] = []

    def consume(rank):  # as two Ray Train workers would, concurrently
        for batch in shards[rank].iter_batches(batch_size=16, batch_format="numpy"):
            frames_, num_frames, labels = to_model_inputs(batch, CLASSES)
            shapes.append((frames_.shape[0], len(num_frames), labels.shape[0]))
            seen[rank].extend(batch["id"].tolist())

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = [i for b in iter_batches(glob, 64) for i in b["id"]]
    assert sorted(seen[0] + seen[1]) == sorted(expected) and len(expected) == 108
    assert seen[0] and seen[1] and all(len(set(shape)) == 1 for shape in shapes)


def test_ray_numpy_batches_give_the_same_model_inputs_as_local_batches(ray_session, gs_bucket):
    from raytrain8m.data.datasource import read_dataset

    glob = f"{gs_bucket}/validate*.tfrecord"
    rows = read_dataset(glob, num_classes=CLASSES).take_batch(100, batch_format="numpy")
    local = next(iter_batches(glob, 100, num_classes=CLASSES))
    order = np.argsort(rows["id"])
    for ours, theirs in zip(to_model_inputs(local, CLASSES), to_model_inputs(rows, CLASSES)):
        np.testing.assert_array_equal(ours[np.argsort(local["id"])], theirs[order])


def test_ray_read_raises_data_error_for_a_corrupt_file(ray_session, tmp_path):
    from raytrain8m.data.datasource import read_dataset

    path = write_videos(tmp_path / "bad.tfrecord", [("v", [7], *frames(2))])
    with pytest.raises(DataError, match="bad.tfrecord, record 0: label 7 outside"):
        read_dataset(path, num_classes=5).materialize()


def test_a_file_rewritten_with_the_same_size_gets_another_identity(tmp_path):
    import pyarrow.fs as pafs

    from raytrain8m.data.files import file_identity, identity_changes

    local, path = pafs.LocalFileSystem(), tmp_path / "train0000.tfrecord"
    path.write_bytes(bytes(200_000))
    first = file_identity(local, str(path))
    assert file_identity(local, str(path)) == first
    data = bytearray(200_000)
    data[-1] = 1  # only the tail differs
    path.write_bytes(bytes(data))
    os.utime(path, ns=(0, first["mtime_ns"]))  # even with the old modification time
    second = file_identity(local, str(path))
    assert second["size"] == first["size"] and second != first
    assert identity_changes(first, second) == "content changed"
    assert identity_changes(None, second).startswith("no record")


def test_an_empty_tfrecord_is_a_data_error_naming_it(tmp_path):
    from raytrain8m.data.files import expand

    (tmp_path / "train0000.tfrecord").write_bytes(b"")
    for pattern in (tmp_path / "train*.tfrecord", tmp_path / "train0000.tfrecord", tmp_path):
        with pytest.raises(DataError, match=r"train0000\.tfrecord: empty file \(0 bytes\)"):
            expand(str(pattern))


def test_step_inputs_are_the_quantized_model_inputs_from_arrow_or_numpy_batches(synthetic_dir):
    from raytrain8m.data.batches import iter_tables, to_step_inputs

    glob = str(synthetic_dir / "train*.tfrecord")
    table = next(iter_tables(glob, 32, num_classes=CLASSES))
    batch = next(iter_batches(glob, 32, num_classes=CLASSES))
    frames_, num_frames, labels = to_model_inputs(batch, CLASSES, max_frames=10)  # clips some videos
    for source in (table, batch):
        quantized, step_frames, multi_hot = to_step_inputs(source, CLASSES, max_frames=10)
        assert quantized.dtype == np.uint8 and quantized.shape == (32, 10, FEATURE_SIZE)
        np.testing.assert_array_equal(step_frames, num_frames)
        valid = np.arange(10)[None, :] < num_frames[:, None]  # padding: 0.0 vs dequantize(0), never read
        np.testing.assert_array_equal(dequantize(quantized)[valid], frames_[valid])
        assert not quantized[~valid].any()
        assert multi_hot.dtype == np.uint8
        np.testing.assert_array_equal(multi_hot.astype(np.float32), labels)
    with pytest.raises(DataError, match="video 0 of the batch: label outside \\[0, 3\\)"):
        to_step_inputs(table, 3, max_frames=10)


def test_ray_tensor_layout_hands_over_contiguous_step_inputs_equal_to_local_ones(ray_session, synthetic_dir):
    from raytrain8m.data.batches import to_step_inputs
    from raytrain8m.data.datasource import read_dataset

    glob = str(synthetic_dir / "validate*.tfrecord")
    rows = read_dataset(glob, num_classes=CLASSES, max_frames=12, layout="tensors").take_batch(
        100, batch_format="numpy")
    assert rows["frames"].dtype == np.uint8 and rows["frames"].shape == (24, 12, FEATURE_SIZE)
    assert rows["frames"].flags.c_contiguous and rows["labels"].shape == (24, CLASSES)
    local = next(iter_batches(glob, 100, num_classes=CLASSES))
    order, local_order = np.argsort(rows["id"]), np.argsort(local["id"])
    for ours, theirs in zip(to_step_inputs(local, CLASSES, 12), to_step_inputs(rows, CLASSES, 12)):
        np.testing.assert_array_equal(ours[local_order], theirs[order])


def test_shuffling_covers_every_record_once_per_epoch_the_same_way_for_a_seed(ray_session, synthetic_dir):
    """Ray Data's blocks in file order (reshuffled each epoch) through the worker's own buffer."""
    from raytrain8m.data.datasource import read_dataset
    from raytrain8m.data.shuffle import shuffled_batches

    glob = [str(synthetic_dir / "train*.tfrecord"), str(synthetic_dir / "validate*.tfrecord")]
    expected = sorted(i for b in iter_batches(glob, 64) for i in b["id"])

    def epochs(seed: int, count: int = 2) -> list[list[str]]:
        dataset = read_dataset(glob, num_classes=CLASSES, max_frames=12, layout="tensors",
                               shuffle_files=True, seed=seed, records_per_block=16)
        dataset.context.execution_options.preserve_order = True
        return [[i for batch in shuffled_batches(dataset.iter_batches(batch_size=None, batch_format="numpy"), 8, 32,
                                                 seed=[seed, 0, epoch], drop_last=False)
                 for i in batch["id"]] for epoch in range(count)]

    first, second = epochs(seed=1)
    assert sorted(first) == expected and sorted(second) == expected  # each record once an epoch
    assert first != second                       # reshuffled between epochs
    assert epochs(seed=1) == [first, second]     # the same seed, the same order
    assert epochs(seed=2)[0] != first


def _numbered_blocks(sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Blocks of rows numbered 0, 1, …: a scalar column and a [3, 2] tensor column holding the number."""
    blocks, start = [], 0
    for size in sizes:
        number = np.arange(start, start + size)
        blocks.append({"n": number, "frames": np.repeat(number, 6).reshape(size, 3, 2).astype(np.uint16)})
        start += size
    return blocks


def test_shuffled_batches_keep_rows_whole_and_order_without_a_buffer():
    from raytrain8m.data.shuffle import shuffled_batches

    blocks = _numbered_blocks([5, 1, 9, 7])  # 22 rows
    ordered = [batch["n"].tolist() for batch in shuffled_batches(blocks, 4, 0)]
    assert ordered == [list(range(i, i + 4)) for i in range(0, 20, 4)]  # in order, the 2 left over dropped
    shuffled = list(shuffled_batches(blocks, 4, 10, seed=3, drop_last=False))
    numbers = np.concatenate([batch["n"] for batch in shuffled])
    assert sorted(numbers.tolist()) == list(range(22)) and numbers.tolist() != list(range(22))
    assert [len(batch["n"]) for batch in shuffled] == [4] * 5 + [2]
    for batch in shuffled:  # each row's columns travel together
        assert batch["frames"].shape[1:] == (3, 2) and batch["frames"].dtype == np.uint16
        np.testing.assert_array_equal(batch["frames"], np.broadcast_to(batch["n"][:, None, None], batch["frames"].shape))
    # a row leaves only once the buffer is full: the first batch comes from the first 10 rows
    assert max(shuffled[0]["n"]) < 10


def test_a_training_runs_blocks_stay_small_however_many_videos_a_file_holds(ray_session, tmp_path):
    """What a run holds in the object store is counted in blocks; Ray Data's own blocks (up to
    128 MiB, 384 videos at 300 frames) overflowed a 1 GiB store into spilling on long runs."""
    from raytrain8m.data import generate
    from raytrain8m.data.datasource import BLOCK_BYTES, tensor_block_rows
    from raytrain8m.models.config import ModelConfig
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.driver import train_dataset

    generate(str(tmp_path), videos=300, classes=3862, max_frames=300, shards=1, seed=0, progress=False,
             validate_fraction=0.0, test_fraction=0.0)  # one file of 300 videos, the paper's classes
    config = TrainConfig(model=ModelConfig.from_name("K4-H16", num_classes=3862), max_frames=300,
                         train_data=str(tmp_path / "train*.tfrecord"))
    dataset, _ = train_dataset(config)
    blocks = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    assert tensor_block_rows(3862, 300) == 96  # what a read task yields at a time
    assert sum(len(block["num_frames"]) for block in blocks) == 300
    # Ray Data regroups yields towards its target block size (here BLOCK_BYTES), slicing only
    # blocks 1.5 times above it; at its default 128 MiB the file (105 MB) was one block.
    assert len(blocks) >= 3
    assert max(sum(column.nbytes for column in block.values()) for block in blocks) <= 1.5 * BLOCK_BYTES
