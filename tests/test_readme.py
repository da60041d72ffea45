"""The README's front door never drifts from the code: every command it shows is run here, the cheap ones as
written and the long ones in a cheap form of the same command (fewer epochs, a dry run, a smoke size), and a
command the README gains without a rule below fails the test."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON = (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
COMMAND_START = re.compile(r"^(python3? |\.venv/bin/|kaggle |conda )")


def shell_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks (continuation lines joined, comments dropped) and the inline
    `...` spans that start like a command."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(c.split()) for c in re.findall(r"`([^`\n]+)`", inline) if COMMAND_START.match(c)]
    return list(dict.fromkeys(commands))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def section(text: str, heading: str) -> str:
    """The README's ``## heading`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no section '## {heading}'"
    return match.group(1)


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    if argv[0] in (".venv/bin/python", "python3", "python"):
        argv = [PYTHON, *argv[1:]]
    elif argv[0].startswith(".venv/bin/"):
        argv = [str(Path(PYTHON).parent / Path(argv[0]).name), *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def load_script(path: Path):
    """A benchmark script as a module (its folder on sys.path for its sibling imports)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


# ------------------------------------------------------------------------------ one rule per kind of command
def check_tasks(argv: list[str], tmp_path: Path) -> None:
    if argv[2] == "test":
        ci = (ROOT / ".ci" / "run").read_text()
        assert " ".join(argv) in ci, ".ci/run must call exactly the README's test command"
        return
    done = run([*argv, "--dry-run"])  # the main job itself runs in tests/test_notebooks.py, per notebook
    assert done.returncode == 0, done.stderr
    assert "would run 0" in done.stdout


def check_papermill(argv: list[str], tmp_path: Path) -> None:
    from helpers.data import SYNTHETIC_DIR
    from helpers.synthetic import ensure_synthetic_dataset

    ensure_synthetic_dataset(SYNTHETIC_DIR)  # what data_dir="auto" makes on first use
    out = Path(argv[2])
    # a fresh checkout has only the folders git keeps (each with its README): papermill will not create one
    assert (ROOT / out.parent / "README.md").is_file(), f"{out.parent}/ does not exist in a fresh checkout"
    done = run(argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (ROOT / out).is_file()


def check_jupyter(argv: list[str], tmp_path: Path) -> None:  # the server itself: the browser test
    done = run([argv[0], "lab", "--version"])
    assert done.returncode == 0 and re.match(r"\d+\.\d+", done.stdout), done.stderr


def check_download(argv: list[str], tmp_path: Path) -> None:
    """Offline (as here) it must stop at once with advice; pointed at a dead address so CI never downloads."""
    done = run([*argv, str(tmp_path / "HAM10000"), "--base-url", "http://127.0.0.1:9", "--timeout", "2"])
    assert done.returncode != 0
    assert "HAM10000" in done.stderr and "Traceback" not in done.stderr


def check_train_cli(argv: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cheap = ["--epochs", "1", "--img-size", "32", "--max-images", "80", "--run-dir", str(run_dir)]
    done = run([*argv, *cheap, "--verbose", "0"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / "best.keras").is_file()


def check_figures(argv: list[str], tmp_path: Path) -> None:
    done = run([*argv, "--out", str(tmp_path / "results.png")])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results.png").stat().st_size > 10_000


def check_throughput(argv: list[str], tmp_path: Path) -> None:
    smoke = ["--sizes", "32", "--rounds", "1", "--seconds", "0.3", "--latency-runs", "2", "--no-tflite"]
    done = run([*argv, *smoke, "--skip-pipeline", "--out", str(tmp_path / "throughput.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "throughput.json").is_file()


def check_accuracy_benchmark(argv: list[str], tmp_path: Path) -> None:
    """Tens of minutes of training: its arguments are checked by the script's own parser."""
    module = load_script(ROOT / argv[1])
    args = module.parse_args(argv[2:])
    assert args is not None


def check_multi_worker(argv: list[str], tmp_path: Path) -> None:
    """Run word for word, two at once, by tests/test_workers.py; here: a cluster that names this worker."""
    import json

    from helpers.train.cli import main

    config = json.loads(argv[0].split("=", 1)[1])
    assert 0 <= config["task"]["index"] < len(config["cluster"]["worker"])
    with pytest.raises(SystemExit) as done:
        main([*argv[4:], "--help"])
    assert done.value.code == 0


def check_search_cli(argv: list[str], tmp_path: Path) -> None:
    """Searches run, killed and resumed, in tests/test_search.py; here: the options it shows parse."""
    from helpers.search import main

    with pytest.raises(SystemExit) as done:
        main([*argv[3:], "--help"])
    assert done.value.code == 0


RULES = [
    (r"^python3 tasks\.py (main|test)\b", check_tasks),
    (r"^\.venv/bin/papermill notebooks/", check_papermill),
    (r"^\.venv/bin/jupyter lab\b", check_jupyter),
    (r"^\.venv/bin/python -m helpers\.download\b", check_download),
    (r"^\.venv/bin/python -m helpers\.train\b", check_train_cli),
    (r"^\.venv/bin/python -m helpers\.search\b", check_search_cli),
    (r"^TF_CONFIG='.*' \.venv/bin/python -m helpers\.train --multi-worker\b", check_multi_worker),
    (r"^\.venv/bin/python benchmarks/figures\.py\b", check_figures),
    (r"^\.venv/bin/python benchmarks/throughput\.py\b", check_throughput),
    (
        r"^\.venv/bin/python benchmarks/(dermamnist|ham10000|transfer|prune|active|search)\.py\b",
        check_accuracy_benchmark,
    ),
    (r"^(kaggle|conda) ", None),  # other tools' commands: not installed here
]


def rule_for(command: str):
    matches = [check for pattern, check in RULES if re.match(pattern, command)]
    assert matches, f"README command without a rule in tests/test_readme.py: {command!r}"
    return matches[0]


def test_every_readme_command_has_a_rule():
    commands = shell_commands(README.read_text())
    assert len(commands) >= 8
    for command in commands:
        rule_for(command)


@pytest.mark.slow
@pytest.mark.parametrize("command", shell_commands(README.read_text()))
def test_readme_command_runs(command: str, tmp_path: Path):
    check = rule_for(command)
    if check is None:
        pytest.skip(f"{command.split()[0]} is another tool's command")
    check(shlex.split(command), tmp_path)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path):
    (code,) = python_blocks(section(README.read_text(), "Python API"))
    script = tmp_path / "example.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}")
    done = run([".venv/bin/python", str(script)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "balanced_accuracy" in done.stdout  # the headline table
    assert (tmp_path / "models" / "readme_run" / "best.keras").is_file()


def test_command_extraction():
    text = "`.venv/bin/python x.py --a 1` and `pip`\n```bash\npython3 a.py \\\n  --b 2   # note\n# c\n```\n"
    assert shell_commands(text) == ["python3 a.py --b 2", ".venv/bin/python x.py --a 1"]
