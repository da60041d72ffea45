"""The benchmark scripts' own machinery (their figures come from running them, not from tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ham10000  # noqa: E402  (benchmarks/ham10000.py)


@pytest.mark.parametrize(
    "script, message",
    [
        ("ham10000.py", "HAM10000 folder {folder} not found"),
        ("inter_op.py", "{folder} holds no HAM10000_metadata.csv"),
    ],
)
def test_benchmark_names_a_folder_without_metadata(tmp_path: Path, script: str, message: str):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert message.format(folder=tmp_path) in done.stderr and "--data-dir" in done.stderr
    assert "Traceback" not in done.stderr


def test_side_by_side_training_that_fails_is_named_with_its_log(tmp_path: Path):
    args = ham10000.parse_args(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as raised:
        ham10000.side_by_side(args, {"plain": None, "held-out-plain": None})
    message = str(raised.value)
    assert "training(s) plain, held-out-plain failed" in message
    log = tmp_path / "out" / "logs" / "plain.log"
    assert str(log) in message and f"HAM10000 folder {tmp_path} not found" in log.read_text()
    assert f"HAM10000 folder {tmp_path} not found" in message, "the log's tail is shown"


def test_transfer_students_are_distilled_runs_with_their_own_settings(tmp_path: Path):
    import transfer  # noqa: PLC0415  (benchmarks/transfer.py)

    args = transfer.parse_args(["--out-dir", str(tmp_path), "--student-epochs", "25"])
    kept = {"kept": {"lite0": "lite0"}}
    settings = {name: transfer.run_settings(args, name, kept) for name in transfer.STUDENTS}
    for split, run in settings.values():
        assert split == "lesion" and run["model_name"] == "dermsep_net"
        assert run["teacher"] == tmp_path / "runs" / "lite0" / "best.keras"
        assert (run["recipe"].distill_alpha, run["recipe"].distill_temperature) == (0.5, 2.0)
    assert [settings[n][1]["epochs"] for n in ("student", "student-mixup", "student-long")] == [25, 25, 32]
    assert settings["student-mixup"][1]["recipe"].mixup_alpha == 0.2
    assert settings["student"][1]["recipe"].mixup_alpha == 0.0
    assert settings["student-wide"][1]["model_options"] == {"widths": [32, 64, 128, 256]}
    assert "model_options" not in settings["student"][1]
    split, held = transfer.run_settings(args, "student-long-held", kept)
    assert split == "held" and held["teacher"] == tmp_path / "runs" / "lite0-held" / "best.keras"
    smoke = transfer.parse_args(["--out-dir", str(tmp_path), "--smoke"])
    assert transfer.run_settings(smoke, "student-long", kept)[1]["epochs"] == 2


def test_figure_shows_the_saved_models_as_val_chose_them():
    import figures  # noqa: PLC0415  (benchmarks/figures.py)

    test = {
        "lite0 network": {"balanced_accuracy": 0.66},
        "lite0 predictor": {"balanced_accuracy": 0.59},
        "student": {"balanced_accuracy": 0.54},
        "student predictor": {"balanced_accuracy": 0.60},
    }
    small = {"run": "student", "kept": "predictor"}
    transfer = {"test": test, "kept": {"lite0": "lite0"}, "default": {"kept": "network"}, "small": small}
    best, small = figures.saved_model_rows(transfer)
    assert best == {"balanced_accuracy": 0.66, "predictor": "best.keras: pretrained Lite0"}
    assert small == {"balanced_accuracy": 0.60, "predictor": "small.keras: distilled dermsep_net"}
    transfer.update(default={"kept": "predictor"}, small={"run": "student", "kept": "network"})
    best, small = figures.saved_model_rows(transfer)
    assert (best["balanced_accuracy"], small["balanced_accuracy"]) == (0.59, 0.54)
    test["lite0-mixup network"] = {"balanced_accuracy": 0.71}  # the transfer run val kept, not a fixed name
    transfer.update(kept={"lite0": "lite0-mixup"}, default={"kept": "network"})
    assert figures.saved_model_rows(transfer)[0]["balanced_accuracy"] == 0.71


def test_figure_is_drawn_from_the_committed_results(tmp_path: Path):
    import figures  # noqa: PLC0415  (benchmarks/figures.py)

    assert figures.main(["--out", str(tmp_path / "results.png")]) == 0
    assert (tmp_path / "results.png").stat().st_size > 10_000
