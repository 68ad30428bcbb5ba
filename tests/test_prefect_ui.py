"""The Prefect UI as a user meets it: a real Prefect server with its UI, the deployment in a `process` work
pool (`flows/deploy.py --pool`), headless Chromium on the deployments list and on the deployment's run form,
a flow run started through the API with changed values, and `prefect worker start` running it.

The judge check is enforced against a coin-flip judge, so the run ends early and cheaply: Failed, with the
reason as its message, after writing its effective params.
"""

from __future__ import annotations

import html
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from ropd.testing.server import ScriptedServer
from tests.conftest import browse
from tests.tiny import BIN, make_project, project_env

FORM_FIELDS = ("params_file", "run_id", "rounds", "method", "lr", "prompts_per_round", "n", "overlap", "tis_cap",
               "teacher", "rubricator", "verifier")


@pytest.fixture
def prefect_ui(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` with its UI, in a home of its own; the base URL and the environment to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**project_env(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"{url}/api",
           "PREFECT_UI_API_URL": f"{url}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.timeout(900)  # the first test to need chromium may wait for apt-get
def test_the_ui_shows_the_deployment_and_its_form_and_a_worker_runs_it_with_the_change(
        tmp_path: Path, smollm2_dir: Path, chromium: Path, prefect_ui: tuple[str, dict[str, str]]) -> None:
    url, env = prefect_ui
    with ScriptedServer(noise=0.5) as srv:
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent,
                            {"judge_check": {"prompts": 2, "enforce": True}})
        deployed = subprocess.run([sys.executable, "flows/deploy.py", "--pool", "tiny-pool", "--name", "tiny"],
                                  cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        deployment = httpx.get(f"{url}/api/deployments/name/ropd-distill/tiny").json()
        assert deployment["work_pool_name"] == "tiny-pool"

        listed = text_of(browse(chromium, tmp_path, "--virtual-time-budget=30000", "--dump-dom", f"{url}/deployments",
                                timeout=120))
        assert "ropd-distill" in listed and "tiny" in listed, listed[:2000]
        form_url = f"{url}/deployments/deployment/{deployment['id']}/run"
        form = text_of(browse(chromium, tmp_path, "--virtual-time-budget=30000", "--dump-dom", form_url, timeout=120))
        assert "Create Flow Run for Deployment: tiny" in form, form[:2000]
        missing = [f for f in FORM_FIELDS if f"{f} (Optional)" not in form]
        assert not missing, (missing, form[:3000])
        shot = tmp_path / "form.png"
        browse(chromium, tmp_path, "--virtual-time-budget=30000", f"--screenshot={shot}", form_url, size="1280,2000",
               timeout=120)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        created = httpx.post(f"{url}/api/deployments/{deployment['id']}/create_flow_run",
                             json={"parameters": {"run_id": "from-ui", "lr": 3e-6}})
        assert created.status_code == 201, created.text
        worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "tiny-pool", "--run-once"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    state = httpx.get(f"{url}/api/flow_runs/{created.json()['id']}").json()["state"]
    assert state["type"] == "FAILED" and state["message"].startswith("judge check FAILED"), \
        (state, worker.stdout[-3000:])
    effective = yaml.safe_load((proj / "data" / "runs" / "from-ui" / "params.yaml").read_text())
    assert effective["run_id"] == "from-ui" and effective["grpo"]["lr"] == 3e-6
    assert not (proj / "data" / "runs" / "from-ui" / "round_0").exists()
