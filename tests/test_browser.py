"""JupyterLab in a real browser: notebooks 01 and 05 run through the UI's "Run All Cells", as a person does.

Playwright for Python drives a headless Chromium: it is a pip package like the rest of the stack, runs from
pytest without Node.js (JupyterLab's own Galata needs a Node toolchain and its test runner), and takes any
Chromium executable, so the distribution's ``chromium`` package works where browser downloads are blocked.
Notebook 01 is the committed one (``data_dir="auto"``: the synthetic default); notebook 05 is a copy with
small parameters that evaluates a model trained here. Screenshots of the finished notebooks go to
``build/screenshots/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "build" / "screenshots"
SETTINGS = {  # JupyterLab user settings: every cell rendered (not only those in view), no news pop-up
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
}
NOISE = ("oneDNN", "absl::", "fully_quantize", "XNNPACK", "cpu_feature_guard")
"""TensorFlow's start-up and converter lines, which must not reach a notebook's outputs."""

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Chromium is missing: install it with `apt-get install chromium`", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(folder: Path) -> tuple[subprocess.Popen, str, str]:
    """JupyterLab from the environment's ``bin`` on 127.0.0.1 (free port, random token) over ``folder``, with
    its own settings and ``DERM_WORK_DIR=folder``; returns the process, its URL and its token."""
    for name, values in SETTINGS.items():
        path = folder / ".settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DERM_WORK_DIR": str(folder),
        "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".workspaces"),
    }
    env.pop("MPLBACKEND", None)  # the notebooks' %matplotlib inline
    argv = [str(BIN / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    argv += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--allow-root"]
    with open(folder / "lab.log", "w") as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}", token


def wait_for_lab(server: subprocess.Popen, url: str, token: str, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server over a folder with notebook 01 and, for notebook 05, a copy with small parameters
    and a model trained here (1 epoch at 32 px, while the server starts); yields its URL and token."""
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook

    from helpers.train import train

    assert CHROMIUM, "Chromium is missing on CI: .ci/run installs it (apt-get install chromium)"
    folder = tmp_path_factory.mktemp("lab")
    (folder / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "01_explore_metadata.ipynb", folder / "notebooks")
    server, url, token = start_lab(folder)
    try:
        run_dir = folder / "models" / "browser"
        train(
            data_dir=synthetic_dir,
            run_dir=run_dir,
            img_size=32,
            epochs=1,
            max_images=120,
            model_name="fast",
            verbose=0,
        )
        small = {
            "model_path": str(run_dir / "best.keras"),
            "data_dir": str(synthetic_dir),
            "max_images": 40,
            "n_gradcam": 1,
        }
        notebook = load_notebook_node(str(ROOT / "notebooks" / "05_evaluate.ipynb"))
        write_ipynb(parameterize_notebook(notebook, small), str(folder / "notebooks" / "05_evaluate.ipynb"))
        wait_for_lab(server, url, token, folder / "lab.log")
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (the distribution's) for the module's notebooks."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


FULL_HEIGHT = """() => {
    const outer = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
    return outer.scrollHeight - outer.clientHeight + window.innerHeight;
}"""
"""The page height at which the whole notebook shows without scrolling."""
TO_TOP = """() => {
    document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer').scrollTop = 0;
}"""
"""Scroll the notebook back to its title (Run All leaves it at the last cell)."""


def run_all(browser, lab: tuple[str, str], name: str, timeout_s: float = 300) -> dict:
    """Open ``notebooks/<name>.ipynb`` (in a workspace of its own), wait for the kernel to be idle, choose
    Run → Run All Cells, wait until every code cell has an execution count and the kernel is idle again;
    save a screenshot of the whole notebook to ``build/screenshots/<name>.png``, shut the kernel down and
    return what the page shows."""
    url, token = lab
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/lab/workspaces/{name}/tree/notebooks/{name}.ipynb?reset&token={token}")
    idle = page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle"))
    idle.first.wait_for(timeout=120_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    prompts = notebook.locator(".jp-CodeCell .jp-InputArea-prompt")
    errors = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    deadline = time.monotonic() + timeout_s
    while True:
        texts = prompts.all_inner_texts()
        assert errors.count() == 0, f"{name}: error output:\n{errors.first.inner_text()[-3000:]}"
        if all(re.fullmatch(r"\[\d+\]:", t.strip()) for t in texts) and idle.count():
            break
        assert time.monotonic() < deadline, f"{name}: cells still waiting after {timeout_s} s: {texts}"
        time.sleep(0.5)
    browser_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if browser_tab.count():
        browser_tab.first.click()  # fold the file browser: the screenshot shows the notebook
    height = min(int(page.evaluate(FULL_HEIGHT)), 16_000)
    page.set_viewport_size({"width": 1280, "height": height})
    page.evaluate(TO_TOP)
    page.wait_for_timeout(500)  # the relayout
    title = notebook.locator(".jp-RenderedMarkdown h1").first.bounding_box()
    last = notebook.locator(".jp-Cell").last.bounding_box()
    assert title["y"] < 200 and last["y"] + last["height"] <= height, "the screenshot misses part of it"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    stderr = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    found = {
        "code_cells": len(texts),
        "stderr": stderr.all_inner_texts(),
        "images": notebook.locator(".jp-OutputArea-output img").count(),
        "h1": notebook.locator(".jp-RenderedMarkdown h1").count(),
        "headings": notebook.locator(".jp-RenderedMarkdown h2, .jp-RenderedMarkdown h3").count(),
    }
    page.close()
    shut_down_kernels(url, token)
    return found


def shut_down_kernels(url: str, token: str) -> None:
    """End the server's notebook sessions and their kernels (the next notebook gets the CPU alone)."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions", headers=headers)) as reply:
        sessions = json.load(reply)
    for session in sessions:
        address = f"{url}/api/sessions/{session['id']}"
        urllib.request.urlopen(urllib.request.Request(address, headers=headers, method="DELETE")).close()


def check_page(found: dict, images: int) -> None:
    """No traceback or TensorFlow noise in stderr, the figures as images, the markdown headings rendered."""
    for text in found["stderr"]:
        assert "Traceback" not in text and not any(n in text for n in NOISE), text[-3000:]
    assert found["images"] >= images, found
    assert found["h1"] == 1 and found["headings"] >= 3, found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "images"),
    [("01_explore_metadata", 5), ("05_evaluate", 6)],  # 05: on the model trained in the fixture
)
def test_notebook_runs_in_jupyterlab(browser, lab, name: str, images: int):
    found = run_all(browser, lab, name)
    assert found["code_cells"] > 5, found
    check_page(found, images=images)
    assert (SCREENSHOTS / f"{name}.png").stat().st_size > 50_000
