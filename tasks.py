#!/usr/bin/env python3
"""The project's two commands; each sets up ``.venv`` on first use (or when pyproject.toml changes).

    python3 tasks.py main [-p NAME VALUE ...] [--only 01 04] [--dry-run]   run the notebooks with papermill
    python3 tasks.py test [pytest args ...]                    unit tests, then the notebooks checked by nbval

Executed notebooks go to ``build/notebooks/``; figures and models to ``visualizations/`` and ``models/``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".pyproject-sha256"
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"


def ensure_venv() -> None:
    """Create/refresh .venv and re-run this script inside it (no-op when already inside)."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"Python 3.11 is required (this is {sys.version.split()[0]}); run with python3.11.")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not VENV_PYTHON.exists():
        print(f"Creating virtual environment in {VENV} ...", flush=True)
        venv.create(VENV, with_pip=True)
    if not STAMP.exists() or STAMP.read_text() != digest:
        print(
            "Installing the project and its pinned dependencies (first run takes a few minutes) ...",
            flush=True,
        )
        pip = [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
        STAMP.write_text(digest)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    os.execve(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]], env)


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order (those that exist), optionally only some by prefix."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if not only or any(p.name.startswith(o) for o in only)]


def run_notebook(path: Path, out_dir: Path, parameters: dict[str, object]) -> Path:
    """Execute one notebook headless with papermill (working directory: notebooks/)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    print(f"\n=== {path.name} {parameters or ''}", flush=True)
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters=parameters,
        cwd=str(NOTEBOOKS),
        progress_bar=True,
        kernel_name="python3",
    )
    return output


def _parse_value(text: str) -> object:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


HEADLESS_DEFAULTS: dict[str, object] = {"verbose": 2}
"""Parameters the main job gives each notebook that declares them, unless set with -p: one line per epoch
instead of Keras's per-step progress bar, which papermill would store as thousands of outputs."""


def notebook_parameters(path: Path, parameters: dict[str, object]) -> dict[str, object]:
    """``parameters`` plus the :data:`HEADLESS_DEFAULTS` the notebook declares and -p did not set."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    return {**{k: v for k, v in HEADLESS_DEFAULTS.items() if k in declared}, **parameters}


def unknown_parameters(paths: list[Path], names: list[str]) -> list[str]:
    """The names (in order) that none of the notebooks ``paths`` declares in its ``parameters`` cell."""
    import papermill

    declared = set()
    for path in paths:
        declared |= set(papermill.inspect_notebook(str(path)))
    return [name for name in names if name not in declared]


def main_job(args: argparse.Namespace) -> int:
    """Run the notebooks end to end on the default data (or with -p overrides)."""
    parameters = {name: _parse_value(value) for name, value in args.parameter}
    paths = notebook_paths(args.only)
    if not paths:
        print(f"error: no notebook matches --only {' '.join(args.only)}; see notebooks/.", file=sys.stderr)
        return 2
    unknown = unknown_parameters(paths, list(parameters))
    if unknown:
        print(
            f"error: no notebook run here takes the parameter(s) {', '.join(unknown)}; each notebook's "
            "'parameters' cell lists its names (see also the README).",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        for path in paths:
            print(f"would run {path.name} with {notebook_parameters(path, parameters)}")
        return 0
    for path in paths:
        run_notebook(path, BUILD / "notebooks", notebook_parameters(path, parameters))
    print(
        f"\nRan {len(paths)} notebooks; executed copies in {BUILD / 'notebooks'}, figures in visualizations/."
    )
    return 0


PARALLEL = ["--numprocesses", "auto", "--maxprocesses", "4", "--dist", "loadfile"]
"""pytest-xdist: one worker per CPU (at most 4), each test file kept whole on one worker, in order (a file's
tests share its fixtures, and notebook 05's test evaluates the run notebook 04's test trained). ``-n 0`` in
the pytest arguments runs everything in one process."""


def test_job(pytest_args: list[str]) -> int:
    """Unit tests in parallel (tests/test_notebooks.py executes every notebook with small parameters into
    build/ci-notebooks/), then nbval re-executes the copies that hold cells marked to reproduce
    (``# NBVAL_CHECK_OUTPUT``) and checks those cells (the others ran once already, with papermill)."""
    import pytest

    code = pytest.main(["tests", *PARALLEL, *pytest_args])
    if code != 0:
        return int(code)
    executed = sorted((BUILD / "ci-notebooks").glob("*.ipynb"))
    executed = [path for path in executed if "NBVAL_CHECK_OUTPUT" in path.read_text()]
    if not executed:
        return 0
    print("\n=== nbval: re-executing the notebooks with reproducible cells (lax mode)", flush=True)
    nbval_args = ["--nbval-lax", "-p", "no:cacheprovider", "--rootdir", str(BUILD), "-q", "-ra"]
    return int(pytest.main([*nbval_args, *map(str, executed)]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("main", help="run the notebooks end to end")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    run.add_argument("--only", nargs="+", help="notebook prefixes, e.g. 01 04")
    run.add_argument("--dry-run", action="store_true", help="check the options, list what would run, stop")
    sub.add_parser("test", help="run the test suite and notebook checks")
    args, rest = parser.parse_known_args()
    if args.command == "main" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    ensure_venv()
    os.chdir(ROOT)
    if args.command == "main":
        return main_job(args)
    return test_job(rest)


if __name__ == "__main__":
    sys.exit(main())
