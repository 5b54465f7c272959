"""Every command's `--help` answers at once: flags parse without TensorFlow, Ray or MLflow."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
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
print(json.dumps(sorted(m for m in ("tensorflow", "ray", "mlflow") if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("job", JOBS)
def test_help_imports_neither_tensorflow_nor_ray_nor_mlflow(job):
    """What keeps `--help` instant (under 1 s idle): none of the three slow imports happens."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(job=job, path=str(REPO / "jobs" / job))],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--verbose" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


# --- `raytrain8m <command>` (raytrain8m/commands/) and its doors in jobs/ ----------------------

COMMANDS_DIR = REPO / "raytrain8m" / "commands"


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "100"})


def test_every_job_is_a_door_to_its_command():
    from raytrain8m.commands import COMMANDS

    modules = sorted(path.name for path in COMMANDS_DIR.glob("*.py") if path.name != "__init__.py")
    assert sorted(f"{name}.py" for name in COMMANDS) == modules == JOBS
    for name, purpose in COMMANDS.items():
        source = (REPO / "jobs" / f"{name}.py").read_text()
        assert ast.get_docstring(ast.parse(source)) == f"{purpose}; see `raytrain8m {name} --help`."
        assert f"from raytrain8m.commands.{name} import main\n" in source
        assert source.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())')


def test_console_help_lists_every_command_at_once():
    from raytrain8m.commands import COMMANDS

    done = _run("-m", "raytrain8m", "--help")
    assert done.returncode == 0 and done.stderr == ""
    for name, purpose in COMMANDS.items():
        assert f"  {name} " in done.stdout and purpose in done.stdout


def test_console_help_imports_no_command_nor_tensorflow_ray_mlflow():
    probe = ("import contextlib, io, sys\n"
             "from raytrain8m.commands import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    assert main(['--help']) == 0\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'ray', 'mlflow')\n"
             "               or m.startswith('raytrain8m.commands.'))\n"
             "assert not heavy, heavy\n")
    done = _run("-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_or_missing_command_is_one_error_line_exit_2():
    done = _run("-m", "raytrain8m", "nosuch")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown command 'nosuch' (choose from synth, sizes, train,")
    assert len(done.stderr.splitlines()) == 1
    done = _run("-m", "raytrain8m")
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("error: no command given")


def _same_help(text: str, prog: str, other: str, other_prog: str) -> None:
    """The same help but for the program name (and so where argparse wraps the usage lines)."""
    usage, _, body = text.partition("\n\n")
    other_usage, _, other_body = other.partition("\n\n")
    assert usage.startswith(f"usage: {prog} ") and other_usage.startswith(f"usage: {other_prog} ")
    assert usage.replace(prog, "PROG", 1).split() == other_usage.replace(other_prog, "PROG", 1).split()
    assert body == other_body and len(body) > 200


def test_train_help_is_the_same_through_the_console_and_the_door(tmp_path):
    console = _run("-m", "raytrain8m", "train", "--help")
    door = _run("jobs/train.py", "--help")
    elsewhere = _run(str(REPO / "jobs" / "train.py"), "--help", cwd=tmp_path)  # not from the repo root
    assert console.returncode == door.returncode == elsewhere.returncode == 0
    _same_help(console.stdout, "raytrain8m train", door.stdout, "train.py")
    assert elsewhere.stdout == door.stdout


@pytest.mark.parametrize("name", [path[:-3] for path in JOBS])
def test_every_command_helps_alike_in_process(name, monkeypatch, capsys):
    import runpy

    from raytrain8m.commands import main

    argv = list(sys.argv)
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0 and sys.argv == argv  # the program name is put back
    console = capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [str(REPO / "jobs" / f"{name}.py"), "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / f"{name}.py"), run_name="__main__")
    assert exited.value.code == 0
    _same_help(console, f"raytrain8m {name}", capsys.readouterr().out, f"{name}.py")


def test_a_bad_flag_through_the_console_names_the_command(capsys):
    from raytrain8m.commands import main

    with pytest.raises(SystemExit) as exited:
        main(["zoo", "--no-such-flag"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --no-such-flag (see raytrain8m zoo --help)\n"
