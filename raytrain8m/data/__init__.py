"""YouTube-8M data: schema and (de)quantization, TFRecords over pyarrow.fs, synthetic data,
local numpy batches and a Ray Data datasource. Ray is imported only by `read_dataset`."""
from __future__ import annotations

from raytrain8m.data.batches import iter_batches, iter_tables, table_to_numpy, to_model_inputs
from raytrain8m.data.examples import (
    FRAME_SCHEMA,
    VIDEO_SCHEMA,
    decode_frame_record,
    decode_records,
    decode_video_record,
    encode_frame_example,
    encode_video_example,
)
from raytrain8m.data.files import FileSplit, expand, register_filesystem, resolve, split_files, unregister_filesystem
from raytrain8m.data.schema import (
    AUDIO_SIZE,
    FEATURE_SIZE,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_SIZE,
    DataError,
    dequantize,
    quantize,
)
from raytrain8m.data.synthetic import generate
from raytrain8m.data.tfrecord import ReadStats, masked_crc32c, read_records, write_records


def read_dataset(*args, **kwargs):
    """`raytrain8m.data.datasource.read_dataset`, imported lazily (it imports Ray)."""
    from raytrain8m.data.datasource import read_dataset as read
    return read(*args, **kwargs)


__all__ = [
    "AUDIO_SIZE", "FEATURE_SIZE", "MAX_FRAMES", "NUM_CLASSES", "RGB_SIZE", "FRAME_SCHEMA",
    "VIDEO_SCHEMA", "DataError", "FileSplit", "ReadStats", "decode_frame_record",
    "decode_records", "decode_video_record", "dequantize", "encode_frame_example",
    "encode_video_example", "expand", "generate", "iter_batches", "iter_tables",
    "masked_crc32c", "quantize", "read_dataset", "read_records", "register_filesystem",
    "resolve", "split_files", "table_to_numpy", "to_model_inputs", "unregister_filesystem",
    "write_records",
]
