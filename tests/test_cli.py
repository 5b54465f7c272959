"""Every command's `--help` answers at once: flags parse without TensorFlow, Ray or MLflow."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(path.name for path in (REPO / "jobs").glob("*.py"))

PROBE = """
import json, runpy, sys
sys.argv = [{job!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("tensorflow", "ray") if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("job", JOBS)
def test_help_imports_neither_tensorflow_nor_ray(job):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE.format(job=job, path=str(REPO / "jobs" / job))],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--verbose" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    assert seconds < 5, f"{job} --help took {seconds:.1f} s"  # under 1 s on an idle machine; a generous margin
