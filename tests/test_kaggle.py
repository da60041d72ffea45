"""A Kaggle session, simulated: the README's "On Kaggle" cell, word for word, in front of notebooks 01 → 05.

A temporary folder stands in for ``/kaggle`` (``DERM_KAGGLE_ROOT``): ``input/skin-cancer-mnist-ham10000``
holds a small synthetic dataset in Kaggle's layout (both image folders and their lower-case duplicates, the
metadata CSV), ``input/dermsep`` a copy of the project, both read-only; ``working/`` is the session's writable
folder and the notebooks' working directory. The notebooks run with papermill and ``data_dir="auto"``;
afterwards the inputs must be byte for byte as before, and the models, figures and caches must be in
``working/``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import papermill
import pytest
from test_readme import README, python_blocks, section

from helpers.logs import is_noise

ROOT = Path(__file__).resolve().parents[1]
DATASET = "skin-cancer-mnist-ham10000"
PARAMETERS: dict[str, dict[str, object]] = {
    "01_explore_metadata": {},
    "02_build_pipeline": {"img_size": 32, "max_images": 40},
    "03_model_architecture": {"img_size": 32, "latency_runs": 2},
    "04_train_and_resume": {
        "img_size": 32,
        "epochs": 1,
        "max_images": 60,
        "extra_epoch": False,
        "verbose": 2,
        "model_name": "fast",  # the session's mechanics, not the model: notebook tests train the default
    },
    "05_evaluate": {"max_images": 20, "n_gradcam": 1},
}


def kaggle_cell(root: Path) -> str:
    """The README's first cell, with ``/kaggle`` moved to the simulated root."""
    (cell,) = python_blocks(section(README.read_text(), "On Kaggle"))
    return cell.replace("/kaggle/", f"{root}/")


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder`` with its size and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture()
def kaggle(tmp_path: Path) -> Path:
    """The simulated ``/kaggle``: read-only inputs (data in Kaggle's layout, the project), ``working/``."""
    from helpers.synthetic import make_synthetic_dataset

    root = tmp_path / "kaggle"
    data = root / "input" / DATASET
    made = make_synthetic_dataset(tmp_path / "made", n_images=60, seed=3)
    data.mkdir(parents=True)
    shutil.copy(made / "HAM10000_metadata.csv", data)
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        shutil.copytree(made / part, data / part)
        shutil.copytree(made / part, data / part.lower())  # Kaggle ships each image folder twice
    project = root / "input" / "dermsep"
    for name in ("helpers", "notebooks"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", project)
    make_read_only(root / "input")
    (root / "working").mkdir()
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.slow
def test_notebooks_run_in_a_kaggle_session(kaggle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    working = kaggle / "working"
    monkeypatch.setenv("DERM_KAGGLE_ROOT", str(kaggle))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a read-only folder takes no __pycache__ either
    for name in ("DERM_WORK_DIR", "DERM_CACHE_DIR", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    before = tree(kaggle / "input")
    notebooks = tmp_path / "notebooks"  # Kaggle's own copies of the imported notebooks
    notebooks.mkdir()
    cell = {"cell_type": "code", "id": "kaggle", "metadata": {}, "outputs": [], "execution_count": None}
    texts = {}
    for name, parameters in PARAMETERS.items():
        notebook = json.loads((kaggle / "input" / "dermsep" / "notebooks" / f"{name}.ipynb").read_text())
        notebook["cells"].insert(0, {**cell, "source": kaggle_cell(kaggle)})
        (notebooks / f"{name}.ipynb").write_text(json.dumps(notebook))
        output = notebooks / f"{name}.out.ipynb"
        papermill.execute_notebook(
            str(notebooks / f"{name}.ipynb"),
            str(output),
            parameters={**({"data_dir": "auto"} if name != "03_model_architecture" else {}), **parameters},
            cwd=str(working),
            progress_bar=False,
        )
        outputs = [o for c in json.loads(output.read_text())["cells"] for o in c.get("outputs", [])]
        text = "\n".join(
            "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs
        )
        noise = [line for line in text.splitlines() if is_noise(line) or "absl" in line]
        assert not noise, f"{name} shows TensorFlow's log lines: {noise[:3]}"
        keras_noise = [
            t for o in outputs if o.get("name") == "stderr" for t in [o["text"]] if "keras/src" in t
        ]
        assert not keras_noise, f"{name} shows Keras warnings: {keras_noise[:1]}"
        texts[name] = text

    assert texts["01_explore_metadata"].splitlines()[0] == str(working)  # the README cell's print
    assert f"using Kaggle input data in {kaggle / 'input' / DATASET}" in texts["01_explore_metadata"]
    assert "Usable:   60 images" in texts["01_explore_metadata"]
    assert tree(kaggle / "input") == before, "something was written into an input folder"
    (run,) = (working / "models").iterdir()
    assert (run / "best.keras").is_file() and (run / "manifest.json").is_file()
    assert str(run / "best.keras") in texts["05_evaluate"]  # found as the newest model in the work folder
    assert list((working / "data" / "cache").glob("*.npy"))
    figures = {p.parent.name for p in (working / "visualizations").rglob("*.png")}
    assert {"01_explore_metadata", run.name} <= figures
    assert (run / "model_int8.tflite").is_file()
    assert not (working / "data" / "synthetic").exists()  # the Kaggle data was used, nothing generated


def test_work_dir_follows_kaggle_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from helpers.paths import PROJECT_ROOT, work_dir

    monkeypatch.delenv("DERM_WORK_DIR", raising=False)
    monkeypatch.setenv("DERM_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    assert work_dir() == PROJECT_ROOT
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    assert work_dir() == tmp_path / "kaggle" / "working"
    monkeypatch.setenv("DERM_WORK_DIR", str(tmp_path / "mine"))
    assert work_dir() == tmp_path / "mine"


def test_noise_lines_are_recognised_and_real_warnings_kept():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796204418.987834    5527 port.cc:153] oneDNN custom operations are on. You may see",
        "fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: FLOAT32",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    ]
    kept = [
        "UserWarning: 3 listed images have no file",
        "W0000 00:00:1.0  12 loop.cc:1] Local rendezvous is aborting with status: OUT_OF_RANGE",
        "Traceback (most recent call last):",
    ]
    assert all(is_noise(line) for line in noise)
    assert not any(is_noise(line) for line in kept)
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL")  # set on `import helpers` unless the user chose a level
