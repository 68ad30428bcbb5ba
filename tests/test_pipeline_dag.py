"""dvc.yaml and the Prefect flow's stage table describe one graph."""

from __future__ import annotations

import shutil
from pathlib import Path

from dvc.repo import Repo

from ropd.params import load_params
from ropd.pipeline.dag import STAGE_PARAMS, stage_io
from ropd.presets import edit_params

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
        keys = [k for d in stage.deps if hasattr(d, "params") for k in d.params]
        assert keys == STAGE_PARAMS[name], f"{address}: dvc.yaml params {keys} != STAGE_PARAMS"
        seen.add(name)
    assert seen == {"demo_data", "prepare", "teacher_sft", "teacher", "judge_check", "rollout", "mine", "qa",
                    "verify", "train", "evaluate", "summarize", "report"}


def test_fifty_rounds_from_one_command(tmp_path: Path) -> None:
    """`ropd rounds 50` gives DVC 50 chained rounds: every round stage, each reading the previous policy."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    Repo.init(str(tmp_path), no_scm=True).close()
    params = edit_params(tmp_path / "params.yaml", ["rounds=50"])
    assert [i.r for i in params.rounds] == list(range(50))
    assert "ropd rounds N" in (tmp_path / "params.yaml").read_text()  # the file's comments survive
    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph
    for r in range(50):
        for name in ("rollout", "mine", "qa", "verify", "train", "evaluate"):
            assert f"{name}@{r}" in stages
    assert not any(a.endswith("@50") for a in stages)
    # round 49 samples from the policy round 48 trained: the chain is unbroken to the last round
    assert graph.has_edge(stages["rollout@49"], stages["train@48"])
    assert load_params(tmp_path / "params.yaml").rounds[-1].next == 50


def test_overlap_samples_each_round_from_the_policy_before(tmp_path: Path) -> None:
    """With overlap, DVC's graph lets round r+1 sample while round r is judged, and matches stage_io."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    Repo.init(str(tmp_path), no_scm=True).close()
    params = edit_params(tmp_path / "params.yaml", ["rounds=3", "grpo.tis_cap=2", "overlap=true"])
    assert [i.policy for i in params.rounds] == [0, 0, 1]  # the switch rewrote the list
    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        graph = repo.index.graph
    assert graph.has_edge(stages["rollout@1"], stages["prepare"])  # policy 0
    assert not graph.has_edge(stages["rollout@1"], stages["train@0"])
    assert graph.has_edge(stages["rollout@2"], stages["train@0"])  # policy 1
    assert graph.has_edge(stages["train@1"], stages["train@0"])  # the update still chains every policy
    deps, _ = stage_io(params, "rollout", 2)
    dvc_deps = {Path(d.fs_path).resolve() for d in stages["rollout@2"].deps if not hasattr(d, "params")}
    assert dvc_deps == {(tmp_path / d).resolve() for d in deps}


def test_prefect_cache_keys_follow_each_stages_params() -> None:
    """More rounds leave every existing stage's key alone; a setting a stage reads changes that stage's key."""
    from ropd.pipeline.dag import params_digest

    base = load_params(ROOT / "params.yaml")
    longer = base.model_copy(update={"rounds": [*base.rounds, type(base.rounds[0])(r=2, next=3, policy=2)]})
    hotter = base.model_copy(update={"grpo": base.grpo.model_copy(update={"lr": 1e-3})})
    for name in STAGE_PARAMS:
        assert params_digest(longer, name) == params_digest(base, name), name
        assert (params_digest(hotter, name) != params_digest(base, name)) == (name == "train"), name
