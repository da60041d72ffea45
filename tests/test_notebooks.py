"""Every notebook runs headless with papermill on the synthetic default, with small parameters.

The executed copies land in build/ci-notebooks/, where `python3 tasks.py test` then has nbval re-run them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "build" / "ci-notebooks"
RUN_DIR = ROOT / "build" / "ci-run"
SEARCH_DIR = ROOT / "build" / "ci-search"

PARAMETERS: dict[str, dict[str, object]] = {
    "01_explore_metadata": {"out_dir": str(ROOT / "build" / "ci-visualizations" / "01")},
    "02_build_pipeline": {"img_size": 64, "max_images": 200},
    "03_model_architecture": {
        "img_size": 64,
        "latency_runs": 5,
        "out_dir": str(ROOT / "build" / "ci-visualizations" / "03"),
    },
    "04_train_and_resume": {
        "img_size": 32,
        "epochs": 2,
        "max_images": 160,
        "run_dir": str(RUN_DIR),
        "finalize": True,
        "student_epochs": 1,
    },
    "05_evaluate": {
        "model_path": str(RUN_DIR / "best.keras"),
        "max_images": 240,
        "compare_model_path": str(RUN_DIR / "best.keras"),  # exercises the comparison; any model would do
    },
    "06_search_hyperparameters": {
        "img_size": 28,
        "epochs": 1,
        "n_trials": 2,
        "max_images": 60,
        "out_dir": str(SEARCH_DIR),
    },
}
# Text each executed notebook must show (checked on the outputs, so a silently empty notebook fails).
EXPECTED_TEXT: dict[str, list[str]] = {
    "01_explore_metadata": ["lesions present in more than one split: 0", "majority_class"],
    "02_build_pipeline": ["each soft label sums to 1: True"],
    "04_train_and_resume": [
        "epochs completed",
        "restored on resume",
        "backup/epoch-0003/state.json",
        "predictor.keras: {",
        "'sha256': '",
        "best val balanced accuracy",
    ],
    "05_evaluate": [
        "matches training split: True",
        "majority baseline",
        "predictions shown",
        "tflite_int8",
        "sensitivity: mel",
        "mean balanced accuracy under the shifts",
        "baseline_pointing_game",
    ],
    "06_search_hyperparameters": [
        "2 trials (2 complete); this call ran 2",
        "best_recipe.json",
        "epochs completed",
    ],
}


def _outputs_text(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    chunks = []
    for cell in cells:
        for output in cell.get("outputs", []):
            chunks.append("".join(output.get("text", "")))
            chunks.append("".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(chunks)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
def test_notebook_runs_headless(name: str):
    notebook = NOTEBOOKS / f"{name}.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in cells) == 1
    assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code")
    if name.startswith("04"):
        for run in (RUN_DIR, RUN_DIR.with_name(f"{RUN_DIR.name}-student")):  # fresh: an old one may differ
            shutil.rmtree(run, ignore_errors=True)
    if name.startswith("06"):
        shutil.rmtree(SEARCH_DIR, ignore_errors=True)  # a fresh study: every trial runs
    OUT.mkdir(parents=True, exist_ok=True)
    output = OUT / notebook.name
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=PARAMETERS.get(name, {}),
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    text = _outputs_text(output)
    for expected in EXPECTED_TEXT.get(name, []):
        assert expected in text, f"{name}: expected output {expected!r} not found"
    for cell in json.loads(output.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "plot_" in source and "import" not in source:
            shown = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert shown, f"{name}: this figure cell shows no image:\n{source[:300]}"


@pytest.mark.slow
def test_notebook_01_runs_on_real_partial_download(ham_dir, tmp_path):
    """Notebook 01 on the real metadata with only 175 of its 10,015 images present."""
    output = tmp_path / "01_real.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "01_explore_metadata.ipynb"),
        str(output),
        parameters={"data_dir": str(ham_dir), "out_dir": str(tmp_path / "figures")},
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    text = _outputs_text(output)
    assert "Usable:   175 images" in text
    assert "9840 listed images have no file" in text
    assert "lesions present in more than one split: 0" in text
    assert "0.669496" in text  # always-nv accuracy on all 10,015 labelled rows
    assert len(list((tmp_path / "figures").glob("*.png"))) == 5


@pytest.mark.slow
def test_notebook_05_on_an_external_test_folder_runs_to_the_end(tmp_path):
    """Every row of the evaluated folder is 'test' (an external set): the notebook must still run to the end,
    its int8 export calibrated on the training data of notebook 04's run (after the parametrized runs)."""
    from helpers.data import resolve_data_dir

    source = resolve_data_dir("auto", verbose=False)
    external = tmp_path / "external"
    external.mkdir()
    metadata = source / "HAM10000_metadata.csv"
    lines = metadata.read_text().splitlines()
    external.joinpath("HAM10000_metadata.csv").write_text(
        "\n".join([lines[0] + ",split", *(line + ",test" for line in lines[1:])]) + "\n"
    )
    for part in source.glob("HAM10000_images_part_*"):
        (external / part.name).symlink_to(part, target_is_directory=True)
    output = tmp_path / "05_external.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "05_evaluate.ipynb"),
        str(output),
        parameters={"model_path": str(RUN_DIR / "best.keras"), "data_dir": str(external), "max_images": 60},
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    text = _outputs_text(output)
    assert "matches training split: None" in text
    assert f"int8 calibration: the train split of {source}" in text
    assert "tflite_int8" in text
