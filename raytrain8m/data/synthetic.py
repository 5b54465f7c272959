"""A synthetic YouTube-8M that models can learn the way they learn the real one.

Each video mixes one or two latent topics. A topic owns a few classes (popular classes are
owned by more topics, so label frequencies are Zipf-skewed; ~3 labels a video, never none)
and several cluster centres in rgb and audio space, laid out in antipodal pairs around a weak
topic offset: a frame is one centre plus noise, so averaging frames mostly cancels the signal
while clustering frames (NetVLAD) recovers it. Features are quantized exactly as the real set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
from tqdm import tqdm

from raytrain8m.data.examples import encode_frame_example, encode_video_example
from raytrain8m.data.files import resolve
from raytrain8m.data.schema import FEATURE_SIZE, RGB_SIZE, dequantize, quantize
from raytrain8m.data.tfrecord import write_records
from raytrain8m.runtime.errors import ConfigError

log = logging.getLogger(__name__)

CENTRE_PAIRS = 2          # a topic has 2 * CENTRE_PAIRS frame centres
TOPIC_OFFSET = 0.05       # default part of a topic that survives mean pooling (real YT8M: little)
CENTRE_SPREAD = 0.6       # the part that only frame clustering sees
CHUNK = 128               # videos generated together


@dataclasses.dataclass(frozen=True)
class World:
    """The latent structure shared by all splits of one synthetic data set."""

    topic_classes: list[np.ndarray]   # per topic, its classes (first = always labelled)
    topic_weights: np.ndarray         # [T] topic popularity
    centres: np.ndarray               # [T, 2*CENTRE_PAIRS, 1152] float32 frame centres


def make_world(classes: int, rng: np.random.Generator, topic_offset: float = TOPIC_OFFSET) -> World:
    topics = max(2, classes // 2)
    class_weights = 1.0 / np.arange(1, classes + 1) ** 0.9
    class_weights = rng.permutation(class_weights / class_weights.sum())
    topic_classes = []
    for _ in range(topics):
        size = min(classes, int(rng.integers(2, 5)))
        topic_classes.append(rng.choice(classes, size=size, replace=False, p=class_weights))
    topic_weights = 1.0 / np.arange(1, topics + 1) ** 0.6
    offset = rng.standard_normal((topics, 1, FEATURE_SIZE), dtype=np.float32) * topic_offset
    spread = rng.standard_normal((topics, CENTRE_PAIRS, FEATURE_SIZE), dtype=np.float32)
    centres = offset + CENTRE_SPREAD * np.concatenate([spread, -spread], axis=1)
    return World(topic_classes, topic_weights / topic_weights.sum(), centres.astype(np.float32))


def _labels(world: World, topics: list[int], rng: np.random.Generator) -> list[int]:
    labels: set[int] = set()
    for topic in topics:
        owned = world.topic_classes[topic]
        keep = rng.random(len(owned)) < 0.55
        keep[0] = True
        labels.update(int(c) for c in owned[keep])
    return sorted(labels)


def _chunk(world: World, count: int, max_frames: int, noise: float,
           rng: np.random.Generator) -> list[tuple[list[int], np.ndarray]]:
    """`count` videos: (labels, quantized frames uint8 [n, 1152])."""
    num_topics = len(world.topic_weights)
    lengths = rng.integers(max(1, max_frames // 4), max_frames + 1, size=count)
    pairs = [rng.choice(num_topics, size=min(num_topics, 1 + int(rng.random() < 0.5)),
                        replace=False, p=world.topic_weights) for _ in range(count)]
    share = rng.uniform(0.3, 0.7, size=count)   # first topic's share of the frames
    video = np.repeat(np.arange(count), lengths)
    first = np.array([p[0] for p in pairs])
    second = np.array([p[-1] for p in pairs])
    topic = np.where(rng.random(len(video)) < share[video], first[video], second[video])
    centre = rng.integers(0, world.centres.shape[1], size=len(video))
    frames = world.centres[topic, centre]
    frames += noise * rng.standard_normal(frames.shape, dtype=np.float32)
    quantized = np.split(quantize(frames), np.cumsum(lengths)[:-1])
    return [(_labels(world, list(p), rng), q) for p, q in zip(pairs, quantized)]


def _noisy_labels(labels: list[int], classes: int, label_noise: float,
                  rng: np.random.Generator) -> list[int]:
    """Each label, with probability `label_noise`, replaced by a class drawn uniformly (it may
    be the same class, or one the video already has); never empty."""
    flip = rng.random(len(labels)) < label_noise
    drawn = rng.integers(0, classes, size=len(labels))
    return sorted(set(np.where(flip, drawn, labels).tolist()))


def _encode(video_id: str, labels: list[int], frames: np.ndarray, video_level: bool) -> bytes:
    rgb, audio = frames[:, :RGB_SIZE], frames[:, RGB_SIZE:]
    if video_level:
        return encode_video_example(video_id, labels, dequantize(rgb).mean(0),
                                    dequantize(audio).mean(0))
    return encode_frame_example(video_id, labels, rgb, audio)


def generate(out: str, videos: int, classes: int, max_frames: int, shards: int, seed: int,
             video_level: bool = False, validate_fraction: float = 0.2,
             test_fraction: float = 0.1, noise: float = 0.45, topic_offset: float = TOPIC_OFFSET,
             label_noise: float = 0.0, progress: bool = True) -> dict:
    """Write train/validate/test .tfrecord shards under `out` (test without labels); return
    a summary (also written to out/synthetic.json). Same arguments, same bytes.

    `label_noise` > 0 corrupts the train split's labels only: each label is, with that
    probability, replaced by a uniformly drawn class. The draws come from their own generator
    (seeded by `seed`), so frames, validate and test are the bytes of `label_noise=0`, which
    writes exactly what the generator wrote before the option existed."""
    if videos < 1 or classes < 2 or max_frames < 1 or shards < 1:
        raise ConfigError("need videos >= 1, classes >= 2, max_frames >= 1, shards >= 1")
    if not 0 <= label_noise <= 1:
        raise ConfigError("label_noise must be between 0 and 1")
    if not (0 <= validate_fraction and 0 <= test_fraction and validate_fraction + test_fraction < 1):
        raise ConfigError("validate_fraction and test_fraction must be >= 0 and sum below 1")
    start = time.perf_counter()
    filesystem, root = resolve(out)
    filesystem.create_dir(root, recursive=True)
    rng = np.random.default_rng(seed)
    label_rng = np.random.default_rng([seed, 1]) if label_noise else None
    world = make_world(classes, rng, topic_offset)
    counts = {"validate": int(round(videos * validate_fraction)),
              "test": int(round(videos * test_fraction))}
    counts = {"train": videos - sum(counts.values()), **counts}
    frequency = np.zeros(classes, np.int64)
    labelled, total_labels, next_id = 0, 0, 0
    summary: dict = {"out": out, "videos": videos, "classes": classes, "max_frames": max_frames,
                     "seed": seed, "noise": noise, "topic_offset": topic_offset,
                     "level": "video" if video_level else "frame", "splits": {}}
    if label_noise:  # only then: label_noise=0 keeps synthetic.json's bytes too
        summary["label_noise"] = label_noise
    bar = tqdm(total=videos, desc="synth", unit="video", disable=not progress)
    for split, count in counts.items():
        files = []
        for shard, members in enumerate(np.array_split(np.arange(count), min(shards, count))
                                        if count else []):
            records = []
            for begin in range(0, len(members), CHUNK):
                size = min(CHUNK, len(members) - begin)
                for labels, frames in _chunk(world, size, max_frames, noise, rng):
                    if split == "test":
                        labels = []
                    elif split == "train" and label_rng is not None:
                        labels = _noisy_labels(labels, classes, label_noise, label_rng)
                    else:
                        labelled += 1
                        total_labels += len(labels)
                        frequency[labels] += 1
                    records.append(_encode(f"{split[:2]}{next_id:06d}", labels, frames,
                                           video_level))
                    next_id += 1
                bar.update(size)
            name = f"{split}{shard:04d}.tfrecord"
            write_records(f"{root}/{name}", records, filesystem)
            files.append(f"{out.rstrip('/')}/{name}")
        summary["splits"][split] = {"videos": count, "files": files}
    bar.close()
    summary["mean_labels_per_video"] = total_labels / max(labelled, 1)
    summary["label_frequency"] = frequency.tolist()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    with filesystem.open_output_stream(f"{root}/synthetic.json", compression=None) as handle:
        handle.write(json.dumps(summary, indent=1).encode())
    log.info("wrote %d videos to %s in %.1f s", videos, out, summary["seconds"])
    return summary
