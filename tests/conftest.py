from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ropd.config import LimitsConfig, RoleConfig
from ropd.llm.base import run_closing
from ropd.llm.cache import CallCache
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.testing.server import ScriptedServer

T = TypeVar("T")
OPEN_CHATS: list[OpenAICompatChat] = []


def run(coro: Coroutine[Any, Any, T], *extra: OpenAICompatChat) -> T:
    """asyncio.run, closing every client the test made inside that loop (as `run_closing` does)."""
    return run_closing(coro, *OPEN_CHATS, *extra)


FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=5.0)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CallCache]:
    c = CallCache(tmp_path / "calls.sqlite")
    yield c
    c.close()


@pytest.fixture
def make_chat(server: ScriptedServer, cache: CallCache) -> Iterator[Callable[..., OpenAICompatChat]]:
    """A client for one role against the scripted server; keyword overrides go to RoleConfig."""
    limiter = CallLimiter(LimitsConfig(max_in_flight=16))

    def make(role: str = "verifier", *, use_cache: bool = True, **overrides: object) -> OpenAICompatChat:
        cfg = RoleConfig(base_url=server.base_url, api_key_env=None, **{**FAST, **overrides})
        chat = OpenAICompatChat(role, cfg, cache=cache if use_cache else None, limiter=limiter)
        OPEN_CHATS.append(chat)
        return chat

    yield make
    OPEN_CHATS.clear()


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module-wide scratch directory, removed after the module unless one of its tests failed.

    Module projects hold GB of checkpoints; pytest's `failed` retention removes only function-scoped
    directories as it goes, and a CI disk of a few GB free must survive the whole suite.
    """
    failed = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2, converted once per machine into data/models (as `ropd models prepare` does)."""
    from ropd.models import prepare_smollm2

    return prepare_smollm2()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server per session (each costs seconds), analytics off."""
    import os

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # a loaded 2-core machine needs more than 30 s
        yield


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run directory, `runs/demo` (tests/test_store_fixtures.py), built once per session.

    Building it loads MiniLM and runs QA (seconds); tests copy it with `shutil.copytree` before changing it.
    """
    from tests.test_store_fixtures import write_run

    return write_run(tmp_path_factory.mktemp("finished") / "runs", "demo")


CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's chromium, installed by apt when missing (needs root); the tests skip only if that fails.
    One worker installs while the others wait (the lock sits above the workers' own temp roots): two
    `apt-get` at once fail on dpkg's lock."""
    from ropd.io import one_writer

    with one_writer(tmp_path_factory.getbasetemp().parent / "chromium-install.lock"):
        if not CHROMIUM.exists():
            if os.geteuid() != 0:
                pytest.skip("chromium is not at /usr/bin/chromium and installing it needs root")
            proc = subprocess.run("apt-get update && apt-get install -y chromium", shell=True, capture_output=True,
                                  text=True, timeout=1200, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if proc.returncode != 0 or not CHROMIUM.exists():
                pytest.skip(f"installing chromium with apt-get failed (exit {proc.returncode}): {proc.stderr[-400:]}")
    return CHROMIUM


def browse(chromium: Path, tmp: Path, *args: str, size: str = "1200,900", timeout: int = 90) -> str:
    """Headless Chromium on one page (--dump-dom, --screenshot=…): what it printed."""
    proc = subprocess.run([str(chromium), *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size={size}",
                           *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
