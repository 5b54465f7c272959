r"""Scoring at YouTube-8M scale: streaming metrics and the ensemble search, in bounded memory.

    python bench/scoring.py                     # 100,000 videos × 3862 classes, 8-member search
    python bench/scoring.py --videos 2000 --members 3   # a quick try (seconds)

Predictions are synthetic and made in chunks of `--chunk` videos (seeded by chunk, so every
phase sees the same split): about 3 labels a video from a Zipf-like class distribution, and
members that agree as trained models do (a shared per-video logit plus each member's own
noise, through a sigmoid). Two phases, each in its own process so that each peak resident
set (`resource.getrusage`) is its own:

- score: `MetricsAccumulator` (GAP@20, Hit@1, PERR; no mAP) over the split; `videos_per_s`
  times the accumulator only, not the generator.
- search: `--members` members' predictions written to a float16 `PredictionStore` on disk,
  then every combination of 1..4 members under the budget ranked by GAP with equal weights
  (`ensemble.rank_combinations`, the `--search` of `jobs/ensemble.py` without the models).

Last line: one JSON object with `videos`, `classes`, `videos_per_s`, `peak_rss_mib`,
`search_peak_rss_mib` (targets: < 2048 and < 4096 MiB).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's raytrain8m

# fp16 MiB of eight of the paper's zoo models (Table 1), so that the budget prunes combinations
SIZES_MIB = [381.40, 259.23, 219.13, 178.32, 140.67, 121.52, 100.93, 80.21]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def chunk(seed: int, index: int, videos: int, classes: int, members: int = 1):
    """(labels bool [videos, classes], each member's probabilities float32 [videos, classes])."""
    rng = np.random.default_rng([seed, index])
    frequency = 1.0 / np.arange(1, classes + 1) ** 0.8
    labels = np.zeros((videos, classes), bool)
    labels[np.repeat(np.arange(videos), 3), rng.choice(classes, 3 * videos, p=frequency / frequency.sum())] = True
    shared = rng.standard_normal((videos, classes), dtype=np.float32)
    shared += np.float32(-5.0) + np.float32(4.0) * labels
    outputs = []
    for member in range(members):
        logits = np.random.default_rng([seed, index, 1 + member]).standard_normal((videos, classes), dtype=np.float32)
        logits *= np.float32(-0.7)
        logits -= shared
        np.exp(logits, out=logits)
        logits += np.float32(1.0)
        outputs.append(np.reciprocal(logits, out=logits))  # sigmoid(shared + 0.7 · noise)
    return labels, outputs


def score(args) -> dict:
    from raytrain8m.records.metrics import MetricsAccumulator

    accumulator = MetricsAccumulator(args.classes)
    scoring_s = 0.0
    for index, begin in enumerate(range(0, args.videos, args.chunk)):
        labels, (predictions,) = chunk(args.seed, index, min(args.chunk, args.videos - begin), args.classes)
        started = time.perf_counter()
        accumulator.add(predictions, labels)
        scoring_s += time.perf_counter() - started
    started = time.perf_counter()
    metrics = accumulator.result()
    scoring_s += time.perf_counter() - started
    return {"videos": metrics["examples"], "gap": metrics["gap"], "hit_at_one": metrics["hit_at_one"],
            "perr": metrics["perr"], "scoring_s": scoring_s, "videos_per_s": metrics["examples"] / scoring_s,
            "peak_rss_mib": peak_rss_mib()}


def search(args) -> dict:
    from raytrain8m.records.predictions import PredictionStore, rank_combinations

    store = PredictionStore.create(Path(args.work) / "store", args.classes)
    started = time.perf_counter()
    writers = [store.writer(f"m{member}") for member in range(args.members)]  # all at once
    for index, begin in enumerate(range(0, args.videos, args.chunk)):
        size = min(args.chunk, args.videos - begin)
        labels, outputs = chunk(args.seed, index, size, args.classes, args.members)
        for writer, predictions in zip(writers, outputs):
            writer.add(predictions, labels, [f"v{begin + i}" for i in range(size)])
    for writer in writers:
        writer.close()
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = rank_combinations(store, SIZES_MIB[:args.members], args.budget, args.max_members,
                             letters="ABCDEFGH"[:args.members], memory_mib=args.memory_mib)
    rank_s = time.perf_counter() - started
    return {"store_gib": sum(p.stat().st_size for p in store.path.iterdir()) / 2**30, "write_s": write_s,
            "combinations": len(rows), "rank_s": rank_s, "best": rows[0]["members"], "best_gap": rows[0]["gap"],
            "best_member_gap": rows[0]["best_member_gap"], "search_peak_rss_mib": peak_rss_mib()}


def run_phase(phase: str, args, work: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--work", str(work)]
    for key in ("videos", "classes", "members", "chunk", "seed", "budget", "max_members", "memory_mib"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: phase {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=3862)
    parser.add_argument("--members", type=int, default=8, help="members of the search (at most 8)")
    parser.add_argument("--max-members", type=int, default=4)
    parser.add_argument("--budget", type=float, default=1024.0, help="MiB, the sum of members' fp16 sizes")
    parser.add_argument("--chunk", type=int, default=1024, help="videos generated and read at a time")
    parser.add_argument("--memory-mib", type=float, default=512, help="the search's bound for kept top 20s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-search", dest="search", action="store_false", help="the score phase only")
    parser.add_argument("--work", help="where the search's store goes (default: a temporary directory)")
    parser.add_argument("--phase", choices=["score", "search"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.members <= len(SIZES_MIB):
        parser.error(f"--members must be 1..{len(SIZES_MIB)}")
    if args.phase:
        print(json.dumps(score(args) if args.phase == "score" else search(args)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scoring-"))
    started = time.perf_counter()
    try:
        result = {"videos": args.videos, "classes": args.classes}
        scored = run_phase("score", args, work)
        print(f"score: {json.dumps(scored)}", file=sys.stderr)
        result.update(videos_per_s=round(scored["videos_per_s"], 1), peak_rss_mib=round(scored["peak_rss_mib"], 1))
        searched = None
        if args.search:
            searched = run_phase("search", args, work)
            print(f"search: {json.dumps(searched)}", file=sys.stderr)
        result["search_peak_rss_mib"] = round(searched["search_peak_rss_mib"], 1) if searched else None
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
