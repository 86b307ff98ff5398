"""End to end in a real browser: `streamlit run app.py` as a subprocess, Debian's chromium driven by
Playwright. Start the demo run from the first page, watch the loss chart gain points, move the ρ slider
and see W* change while the sidebar keeps the training run picked, and keep a screenshot of every page in
test-artifacts/.

The demo is shortened through DFG_DEMO_OVERRIDES (read by dfg.views.demo_config) and reuses the tiny
run's data root, whose cached source model matches pretrain_steps=50. It has enough steps to still be
training while the test watches; the fixture ends its worker."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dfg.runstore import Run, list_runs

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
DEMO = ("steps=300,pretrain_steps=50,head_refit_steps=10,log_every=2,eval_every=20,ckpt_every=20,n_w=10,"
        "limit_test=200,fw_per_class=5,threads=1")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None
pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the PyPI package playwright is not installed"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny_dfg_run, tmp_path):
    """The app on a free localhost port with its own runs dir; killed (with any worker it started) after."""
    port, runs_dir = free_port(), tmp_path / "runs"
    env = {**os.environ, "DFG_RUNS_DIR": str(runs_dir), "DFG_DATA_ROOT": str(tiny_dfg_run.data_root),
           "DFG_DEMO_OVERRIDES": DEMO}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"streamlit did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield url, runs_dir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
        for run in list_runs(runs_dir):  # the demo worker runs in its own session: end it by its pid
            pid = int((run.path / "worker.pid").read_text() or 0) if (run.path / "worker.pid").exists() else 0
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def points_read(page) -> int:
    text = page.get_by_text("points read:").first.inner_text()
    return int(text.rsplit(":", 1)[1])


def make_newest(runs_dir: Path, finished: Path) -> None:
    """A copy of a finished run that lists first in the sidebar (newest created)."""
    newer = runs_dir / "newer"
    shutil.copytree(finished, newer)
    status = json.loads((newer / "status.json").read_text())
    (newer / "status.json").write_text(json.dumps({**status, "created": time.time()}))


def wait_for_step(run: Run) -> None:
    """Until the training run records a step after this call."""
    step, deadline = run.raw_status()["step"], time.time() + 60
    while run.raw_status()["step"] <= step and time.time() < deadline:
        time.sleep(0.3)
    assert run.raw_status()["step"] > step


def test_demo_from_the_browser(server, tiny_dfg_run):
    url, runs_dir = server
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url)
        start = page.get_by_role("button", name="Start the demo run")
        expect(start).to_be_visible(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "1_start.png")

        start.click()  # -> a run folder, a background worker, and the Live losses page
        page.wait_for_url("**/losses?run=*", timeout=30_000)
        run_id = page.url.rsplit("run=", 1)[1]
        assert [r.id for r in list_runs(runs_dir)] == [run_id]
        expect(page.get_by_text("L_D critic (Eq. 1)").first).to_be_visible(timeout=120_000)
        first = points_read(page)
        deadline = time.time() + 60
        while points_read(page) <= first and time.time() < deadline:
            page.wait_for_timeout(500)  # the fragment polls every 2 s and appends only new rows
        assert points_read(page) > first >= 1
        page.screenshot(path=ARTIFACTS / "3_losses.png")

        # The sidebar's pick of a training run that is not the newest must survive its steps: a served
        # selectbox keeps its shown text as its value, and labels that carried the live step lost the pick
        # at the first rerun after a step and fell back to the newest run.
        make_newest(runs_dir, tiny_dfg_run.run.path)
        page.goto(f"{url}/filter_weights?run={run_id}")
        expect(page.get_by_text("W* for ρ=0.75, δ=0.95").first).to_be_visible(timeout=60_000)
        pick = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Run")
        shown = re.compile(f"^{re.escape(run_id)}( |$)")  # the bare id (older code: the id and its live step)
        expect(pick).to_have_value(shown)
        wait_for_step(Run(runs_dir, run_id))
        heatmap = page.locator(".stPlotlyChart").nth(2)
        before = heatmap.screenshot()
        page.screenshot(path=ARTIFACTS / "4_filter_weights.png")
        rho = page.locator('input[type="range"][aria-label="ρ"]')
        rho.focus()
        for _ in range(15):  # 0.75 -> 0.00 in steps of 0.05
            rho.press("ArrowLeft")
        page.wait_for_timeout(2000)  # the reruns the key presses started
        expect(pick).to_have_value(shown)
        assert page.url.endswith(f"run={run_id}")
        expect(page.get_by_text("W* for ρ=0.00, δ=0.95").first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1000)
        assert heatmap.screenshot() != before
        page.screenshot(path=ARTIFACTS / "4_filter_weights_rho0.png")

        ckpt = runs_dir / run_id / "checkpoint.pt"
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline:  # embeddings and Grad-CAM need a checkpoint
            time.sleep(0.5)
        Run(runs_dir, run_id).request_stop()  # the worker checkpoints and ends: the pages below get the CPU
        for n, name, ready in ((2, "train", "Start training"), (7, "results", "Per class"),
                               (5, "embeddings", "generated features, checkpoint step"),
                               (6, "gradcam", "DFG: ")):
            page.goto(f"{url}/{name}?run={run_id}")
            expect(page.get_by_text(ready).first).to_be_visible(timeout=90_000)
            if name == "embeddings":  # hovering a real point shows its test image in the tooltip
                point = page.locator('.vega-embed path[aria-label*="kind: real"]').nth(3)
                point.wait_for(timeout=30_000)
                point.hover(force=True)
                expect(page.locator("#vg-tooltip-element img")).to_be_visible(timeout=10_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=ARTIFACTS / f"{n}_{name}.png")
        browser.close()
    assert sorted(f.name for f in ARTIFACTS.glob("*.png")) == [
        "1_start.png", "2_train.png", "3_losses.png", "4_filter_weights.png", "4_filter_weights_rho0.png",
        "5_embeddings.png", "6_gradcam.png", "7_results.png"]
