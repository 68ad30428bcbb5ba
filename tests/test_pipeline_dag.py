"""dvc.yaml and the Prefect flow's stage table describe one graph."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo

from ropd.params import load_params
from ropd.pipeline.dag import stage_io

ROOT = Path(__file__).resolve().parent.parent


def test_dvc_yaml_matches_stage_io() -> None:
    params = load_params(ROOT / "params.yaml")
    with Repo(str(ROOT)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
    seen = set()
    for address, stage in stages.items():
        name, _, r = address.partition("@")
        deps, outs = stage_io(params, name, int(r) if r else None)
        rel = lambda p: str(Path(p).resolve().relative_to(ROOT))  # noqa: E731
        files = [rel(d.fs_path) for d in stage.deps if rel(d.fs_path) != "params.yaml"]  # params: separate
        assert sorted(files) == sorted(rel(ROOT / p) for p in deps), address
        assert sorted(rel(o.fs_path) for o in stage.outs) == sorted(rel(ROOT / p) for p in outs), address
        seen.add(name)
    assert seen == {"demo_data", "prepare", "teacher_sft", "teacher", "rollout", "mine", "qa", "verify", "train",
                    "evaluate", "summarize", "report"}
