"""kill -9 in the middle of the teacher stage (an LLM teacher, the paid one), then the same command: the
index is written whole or not at all, no teacher answer is bought twice, and the table equals an
uninterrupted build. tests/test_resume.py does the same for mine, verify and train."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from ropd.testing.server import ScriptedServer
from tests.test_resume import kill_when, ok_calls, ropd, served_twice
from tests.tiny import make_project

PROMPTS, M = 3, 2


def test_kill_mid_teacher_then_resume(tmp_path: Path, smollm2_dir: Path) -> None:
    with ScriptedServer(latency=0.4) as srv:
        teacher = {"provider": "openai", "base_url": srv.base_url, "model": "stand-in-judge", "api_key_env": None,
                   "temperature": 1.0, "max_tokens": 256}
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent, {
            "data.prompts_per_round": PROMPTS, "limits.max_in_flight": 1, "teacher.role": teacher, "teacher.m": M})
        for stage in ("demo_data", "prepare"):
            assert ropd(proj, stage).returncode == 0
        out = proj / "data" / "runs" / "tiny" / "teacher.parquet"

        kill_when(proj, ["teacher"], lambda: ok_calls(proj) >= 2)  # answers go one at a time; 2 paid
        assert not out.exists() and not list(out.parent.glob(".*.tmp"))
        assert ropd(proj, "teacher").returncode == 0
        resumed = pd.read_parquet(out)
        assert served_twice(srv) == [] and srv.served("teacher") == len(resumed)  # each answer bought once

        shutil.rmtree(proj / "data" / "cache")  # the uninterrupted reference, from an empty cache
        assert ropd(proj, "teacher").returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), resumed)
    sizes = resumed.groupby("prompt_id").size()
    assert len(sizes) >= PROMPTS and (sizes == M).all()
