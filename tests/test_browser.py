"""The MLflow UI on a real run's results, in headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS", REPO / "test-artifacts"))

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _chromium() -> None:
    require(CHROMIUM is not None, "Chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture
def mlflow_ui(ci_workflow: Path):
    port = free_port()
    db = ci_workflow / "results" / "mlflow.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow ui did not answer /health within 120 s")
    yield url, ci_workflow
    os.killpg(proc.pid, 9)
    proc.wait()


def test_experiment_page_shows_stage_and_evaluation_runs(mlflow_ui) -> None:
    import playwright.sync_api as playwright  # a test dependency
    from mlflow.tracking import MlflowClient

    url, work = mlflow_ui
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("eofs-z500-ci")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    evaluation = next(r for r in runs if r.data.tags.get("pipeline.stage") == "evaluate")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    n_runs = len(runs)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        # the link the README gives opens the experiment on its runs table. The experiment is marked as model
        # training, but MLflow 3.17's UI takes the kind from its GenAI / Model training switch (stored in the
        # browser, GenAI by default) or from the link's workflowType, and opens on a GenAI overview otherwise
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
        page.goto(f"{url}/#/experiments/{exp.experiment_id}?workflowType=machine_learning", wait_until="load")
        page.get_by_text(f"{n_runs} matching runs").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow_landing.png"), full_page=True)
        assert page.get_by_text("Detect issues").count() == 0
        page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs", wait_until="domcontentloaded")
        page.get_by_text(f"{n_runs} matching runs").wait_for(timeout=60_000)
        page.get_by_role("link", name="eofs-z500-ci").first.wait_for(timeout=30_000)  # the parent run
        # expand the parent run: its stage runs appear nested under it
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        for stage in ("prepare", "normalise", "train", "collect-eval", "sample"):
            page.get_by_role("link", name=stage, exact=True).first.wait_for(timeout=30_000)
        point = evaluation.data.tags["sweep_point"].replace("/", " ")
        page.get_by_role("link", name=f"evaluate {point}").first.wait_for(timeout=30_000)  # a sweep point
        page.screenshot(path=str(ARTIFACTS / "mlflow_experiment.png"), full_page=True)
        # an evaluation run's page: its sweep parameters and skill metrics
        page.goto(
            f"{url}/#/experiments/{exp.experiment_id}/runs/{evaluation.info.run_id}", wait_until="domcontentloaded"
        )
        page.get_by_text("crps_z500").first.wait_for(timeout=60_000)
        page.get_by_text(evaluation.data.params["sampler"], exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow_evaluation_run.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "mlflow_experiment.png").stat().st_size > 10_000
    # every run says what it is; the parent carries the verdict and spans the stages
    parent = next(r for r in runs if r.data.tags.get("pipeline.role") == "experiment")
    assert "climatology" in parent.data.tags["mlflow.note.content"]
    assert parent.info.end_time and parent.info.end_time > parent.info.start_time
    assert all(r.data.tags.get("mlflow.note.content") for r in runs), [r.info.run_name for r in runs]
