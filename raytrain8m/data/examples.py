"""Encode/decode YouTube-8M records: frame-level SequenceExample and video-level Example.

The message classes are built here from tensorflow/core/example/{feature,example}.proto in a
private descriptor pool, so the wire format is TensorFlow's but reading needs no TensorFlow
import (3+ s and hundreds of MiB in every Ray Data worker). Frames are sliced straight out of
the wire bytes when a record has the canonical layout TensorFlow writes (faster than protobuf
objects per frame or tf.io.parse_sequence_example: bench/bench_decode.py); anything else takes
the per-frame protobuf path, which also names what is wrong.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from raytrain8m.data.schema import AUDIO_SIZE, MAX_FRAMES, RGB_SIZE, DataError
from raytrain8m.data.wire import canonical_frames, locate

log = logging.getLogger(__name__)

_F = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> dict[str, type]:
    file = descriptor_pb2.FileDescriptorProto(
        name="raytrain8m/tensorflow_example.proto", package="tensorflow", syntax="proto3")

    def message(name, fields, parent=None, map_entry=False):
        proto = (parent.nested_type if parent is not None else file.message_type).add(name=name)
        if map_entry:
            proto.options.map_entry = True
        for field_name, number, kind, label, type_name, *oneof in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if oneof:
                field.oneof_index = oneof[0]
        return proto

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    msg = _F.TYPE_MESSAGE
    message("BytesList", [("value", 1, _F.TYPE_BYTES, rep, "")])
    message("FloatList", [("value", 1, _F.TYPE_FLOAT, rep, "")])
    message("Int64List", [("value", 1, _F.TYPE_INT64, rep, "")])
    feature = message("Feature", [("bytes_list", 1, msg, opt, ".tensorflow.BytesList", 0),
                                  ("float_list", 2, msg, opt, ".tensorflow.FloatList", 0),
                                  ("int64_list", 3, msg, opt, ".tensorflow.Int64List", 0)])
    feature.oneof_decl.add(name="kind")
    for name, entry, value_type in (("Features", "feature", "Feature"),
                                    ("FeatureList", None, None),
                                    ("FeatureLists", "feature_list", "FeatureList")):
        if entry is None:
            message(name, [("feature", 1, msg, rep, ".tensorflow.Feature")])
            continue
        entry_name = "".join(p.capitalize() for p in entry.split("_")) + "Entry"
        parent = message(name, [(entry, 1, msg, rep, f".tensorflow.{name}.{entry_name}")])
        message(entry_name, [("key", 1, _F.TYPE_STRING, opt, ""),
                             ("value", 2, msg, opt, f".tensorflow.{value_type}")],
                parent=parent, map_entry=True)
    message("Example", [("features", 1, msg, opt, ".tensorflow.Features")])
    message("SequenceExample", [("context", 1, msg, opt, ".tensorflow.Features"),
                                ("feature_lists", 2, msg, opt, ".tensorflow.FeatureLists")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Features", "Example", "SequenceExample")}


_CLASSES = _message_classes()
Features = _CLASSES["Features"]
Example = _CLASSES["Example"]
SequenceExample = _CLASSES["SequenceExample"]

FRAME_SCHEMA = pa.schema([("id", pa.string()), ("labels", pa.list_(pa.int32())),
                          ("num_frames", pa.int32()), ("rgb", pa.binary()), ("audio", pa.binary())])
VIDEO_SCHEMA = pa.schema([("id", pa.string()), ("labels", pa.list_(pa.int32())),
                          ("mean_rgb", pa.list_(pa.float32(), RGB_SIZE)),
                          ("mean_audio", pa.list_(pa.float32(), AUDIO_SIZE))])


def encode_frame_example(video_id: str, labels: Sequence[int], rgb: np.ndarray,
                         audio: np.ndarray) -> bytes:
    """A frame-level SequenceExample: rgb uint8 [F, 1024], audio uint8 [F, 128]."""
    example = SequenceExample()
    context = example.context.feature
    context["id"].bytes_list.value.append(video_id.encode())
    context["labels"].int64_list.value.extend(int(label) for label in labels)
    for name, frames in (("rgb", rgb), ("audio", audio)):
        feature_list = example.feature_lists.feature_list[name].feature
        for frame in np.ascontiguousarray(frames, dtype=np.uint8):
            feature_list.add().bytes_list.value.append(frame.tobytes())
    return example.SerializeToString(deterministic=True)


def encode_video_example(video_id: str, labels: Sequence[int], mean_rgb: np.ndarray,
                         mean_audio: np.ndarray) -> bytes:
    """A video-level Example with float mean_rgb [1024] and mean_audio [128]."""
    example = Example()
    feature = example.features.feature
    feature["id"].bytes_list.value.append(video_id.encode())
    feature["labels"].int64_list.value.extend(int(label) for label in labels)
    feature["mean_rgb"].float_list.value.extend(np.asarray(mean_rgb, np.float32).tolist())
    feature["mean_audio"].float_list.value.extend(np.asarray(mean_audio, np.float32).tolist())
    return example.SerializeToString(deterministic=True)


def _id_and_labels(features, path, index, num_classes) -> tuple[str, list[int]]:
    ids = features["id"].bytes_list.value if "id" in features else []
    if len(ids) != 1:
        raise DataError(path, index, f"expected one id, found {len(ids)}")
    labels = list(features["labels"].int64_list.value) if "labels" in features else []
    if num_classes is not None:
        bad = [label for label in labels if not 0 <= label < num_classes]
        if bad:
            raise DataError(path, index, f"label {bad[0]} outside [0, {num_classes})")
    return ids[0].decode("utf-8", errors="replace"), labels


def _frames(feature_lists, name, size, path, index) -> tuple[int, bytes]:
    """The slow path, per frame: names what is wrong, or reads a non-canonical record."""
    if name not in feature_lists:
        raise DataError(path, index, f"no '{name}' feature list (a video-level record? "
                                     f"read it with video_level=True)")
    features = feature_lists[name].feature
    values = [value for feature in features for value in feature.bytes_list.value]
    if len(values) != len(features):
        raise DataError(path, index, f"{name} frames must hold one bytes value each")
    for frame, value in enumerate(values):
        if len(value) != size:
            raise DataError(path, index, f"{name} frame {frame} has {len(value)} bytes, "
                                         f"expected {size}")
    return len(values), b"".join(values)


def _fast_decode(record: bytes):
    """(context Features, (n, rgb), (n, audio)) read straight from the wire bytes (3x faster
    than protobuf objects per frame, see bench/bench_decode.py), or None to take the slow path."""
    located = locate(record)
    if located is None:
        return None
    context, lists = located
    if b"rgb" not in lists or b"audio" not in lists:
        return None
    rgb = canonical_frames(record, lists[b"rgb"], RGB_SIZE)
    audio = canonical_frames(record, lists[b"audio"], AUDIO_SIZE) if rgb else None
    if audio is None:
        return None
    try:
        features = Features.FromString(record[slice(*context)]) if context else Features()
    except DecodeError:
        return None
    return features, rgb, audio


def decode_frame_record(record: bytes, path: str | None = None, index: int | None = None,
                        num_classes: int | None = None, max_frames: int = MAX_FRAMES) -> dict:
    """One validated frame-level record as {id, labels, num_frames, rgb, audio} (bytes)."""
    row = _decode_frame(record, path, index, num_classes, max_frames)
    return {**row, "rgb": bytes(row["rgb"]), "audio": bytes(row["audio"])}


def _decode_frame(record: bytes, path: str | None, index: int | None, num_classes: int | None,
                  max_frames: int) -> dict:
    """decode_frame_record with rgb/audio as uint8 arrays or bytes, whichever was cheaper."""
    fast = _fast_decode(record)
    if fast is not None:
        context, (num_rgb, rgb), (num_audio, audio) = fast
        context = context.feature
    else:
        try:
            example = SequenceExample.FromString(record)
        except DecodeError as error:
            raise DataError(path, index, f"not a SequenceExample: {error}") from error
        context, feature_lists = example.context.feature, example.feature_lists.feature_list
        num_rgb, rgb = _frames(feature_lists, "rgb", RGB_SIZE, path, index)
        num_audio, audio = _frames(feature_lists, "audio", AUDIO_SIZE, path, index)
    video_id, labels = _id_and_labels(context, path, index, num_classes)
    if num_rgb != num_audio:
        raise DataError(path, index, f"{num_rgb} rgb frames but {num_audio} audio frames")
    if num_rgb > max_frames:
        raise DataError(path, index, f"{num_rgb} frames, more than {max_frames}")
    if num_rgb == 0:
        raise DataError(path, index, "no frames")
    return {"id": video_id, "labels": labels, "num_frames": num_rgb, "rgb": rgb, "audio": audio}


def decode_video_record(record: bytes, path: str | None = None, index: int | None = None,
                        num_classes: int | None = None) -> dict:
    """One validated video-level record as {id, labels, mean_rgb, mean_audio}."""
    try:
        example = Example.FromString(record)
    except DecodeError as error:
        raise DataError(path, index, f"not an Example: {error}") from error
    features = example.features.feature
    video_id, labels = _id_and_labels(features, path, index, num_classes)
    row = {"id": video_id, "labels": labels}
    for name, size in (("mean_rgb", RGB_SIZE), ("mean_audio", AUDIO_SIZE)):
        values = features[name].float_list.value if name in features else []
        if len(values) != size:
            raise DataError(path, index, f"{name} has {len(values)} floats, expected {size}")
        row[name] = np.asarray(values, dtype=np.float32)
    return row


def _binary_column(values: list) -> pa.Array:
    """A binary column from bytes or uint8 arrays (strided views included), copying each once."""
    sizes = np.fromiter((np.asarray(v).size if isinstance(v, np.ndarray) else len(v)
                         for v in values), np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise DataError(None, None, f"{offsets[-1]} bytes in one batch; use smaller batches")
    data = np.empty(int(offsets[-1]), np.uint8)
    for value, start, end in zip(values, offsets[:-1], offsets[1:]):
        if isinstance(value, np.ndarray):
            data[start:end].reshape(value.shape)[...] = value
        else:
            data[start:end] = np.frombuffer(value, np.uint8)
    return pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(
        offsets.astype(np.int32)), pa.py_buffer(data)])


def rows_to_batch(rows: list[dict], video_level: bool = False) -> pa.RecordBatch:
    """Decoded rows -> one RecordBatch with FRAME_SCHEMA or VIDEO_SCHEMA."""
    schema = VIDEO_SCHEMA if video_level else FRAME_SCHEMA
    columns = {"id": pa.array([r["id"] for r in rows], pa.string()),
               "labels": pa.array([r["labels"] for r in rows], pa.list_(pa.int32()))}
    if video_level:
        for name, size in (("mean_rgb", RGB_SIZE), ("mean_audio", AUDIO_SIZE)):
            flat = (np.concatenate([r[name] for r in rows]) if rows
                    else np.zeros(0, np.float32))
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), size)
    else:
        columns["num_frames"] = pa.array([r["num_frames"] for r in rows], pa.int32())
        columns["rgb"] = _binary_column([r["rgb"] for r in rows])
        columns["audio"] = _binary_column([r["audio"] for r in rows])
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def decode_rows(records: Sequence[tuple[int, bytes]], path: str | None = None,
                num_classes: int | None = None, max_frames: int = MAX_FRAMES,
                video_level: bool = False, skip_corrupt: bool = False, stats=None) -> list[dict]:
    """(record index, bytes) pairs of one file -> validated rows (frames as uint8 views or
    bytes); bad records raise DataError naming file and record, or with `skip_corrupt` are
    logged and counted in `stats.skipped`."""
    rows = []
    for index, record in records:
        try:
            if video_level:
                rows.append(decode_video_record(record, path, index, num_classes))
            else:
                rows.append(_decode_frame(record, path, index, num_classes, max_frames))
        except DataError as error:
            if not skip_corrupt:
                raise
            if stats is not None:
                stats.skipped += 1
                stats.records -= 1
            log.warning("skip_corrupt: %s; skipping this record", error)
    return rows


def decode_records(records: Sequence[tuple[int, bytes]], path: str | None = None,
                   num_classes: int | None = None, max_frames: int = MAX_FRAMES,
                   video_level: bool = False, skip_corrupt: bool = False,
                   stats=None) -> pa.RecordBatch:
    """`decode_rows` as one RecordBatch with FRAME_SCHEMA or VIDEO_SCHEMA."""
    return rows_to_batch(decode_rows(records, path, num_classes, max_frames, video_level,
                                     skip_corrupt, stats), video_level)


def rows_to_step_arrays(rows: list[dict], num_classes: int, max_frames: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded frame-level rows -> (frames uint8 [n, max_frames, rgb+audio] zero-padded,
    num_frames int32 [n], labels uint8 multi-hot [n, V]), each frame copied once."""
    frames = np.zeros((len(rows), max_frames, RGB_SIZE + AUDIO_SIZE), np.uint8)
    labels = np.zeros((len(rows), num_classes), np.uint8)
    num_frames = np.zeros(len(rows), np.int32)
    for i, row in enumerate(rows):
        used = num_frames[i] = min(int(row["num_frames"]), max_frames)
        for name, offset, size in (("rgb", 0, RGB_SIZE), ("audio", RGB_SIZE, AUDIO_SIZE)):
            value = row[name]
            value = value if isinstance(value, np.ndarray) else np.frombuffer(value, np.uint8)
            frames[i, :used, offset:offset + size] = value.reshape(-1, size)[:used]
        labels[i, row["labels"]] = 1
    return frames, num_frames, labels
