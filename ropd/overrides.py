"""Run settings chosen at launch (the Prefect UI's form) applied on top of a params file.

The form's fields are typed so the UI can render them; their values then go through the same `--set`
path and the same params model as a hand-edited params.yaml, so a bad value gets the message a bad
line of the file would. A run whose settings differ from the file gets a run id of its own unless the
form names one: a UI experiment must not overwrite the outputs that `dvc.lock` records for the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ropd.config import ReasoningEffort
from ropd.params import Params
from ropd.presets import apply_set, load_doc, render

Method = Params.model_fields["method"].annotation
LR_KEY = {"sft": "sft.lr", "lopd": "lopd.lr"}  # every other method trains with GRPO


class RoleOverride(BaseModel):
    """One LLM role's endpoint, as the UI sets it; unset fields keep the params file's."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    reasoning_effort: ReasoningEffort | None = None


class RunOverrides(BaseModel):
    """The deployment's form. None everywhere is the params file as it is."""

    model_config = ConfigDict(extra="forbid")
    run_id: str | None = Field(default=None, description="default: the file's, or a new one if anything changed")
    rounds: int | None = Field(default=None, description="rounds in all")
    method: Method | None = None  # type: ignore[valid-type]
    lr: float | None = Field(default=None, description="the method's learning rate (grpo.lr, sft.lr or lopd.lr)")
    prompts_per_round: int | None = None
    n: int | None = Field(default=None, description="student rollouts per prompt")
    overlap: bool | None = Field(default=None, description="judge round r while round r+1 samples (needs tis_cap)")
    tis_cap: float | None = Field(default=None, description="grpo.tis_cap, the importance-ratio cap (paper: 2)")
    teacher: RoleOverride | None = None
    rubricator: RoleOverride | None = None
    verifier: RoleOverride | None = None

    def sets(self, method: str) -> list[str]:
        """The `dotted.key=value` assignments, values as JSON (which is YAML); run_id is left to `effective`."""
        keys: dict[str, Any] = {"rounds": self.rounds, "method": self.method,
                                LR_KEY.get(self.method or method, "grpo.lr"): self.lr,
                                "data.prompts_per_round": self.prompts_per_round, "student.sampling.n": self.n,
                                "grpo.tis_cap": self.tis_cap, "overlap": self.overlap}
        for role, prefix in (("teacher", "teacher.role"), ("rubricator", "rubricator"), ("verifier", "verifier")):
            for field, value in (getattr(self, role) or RoleOverride()).model_dump().items():
                keys[f"{prefix}.{field}"] = value
        return [f"{key}={json.dumps(value)}" for key, value in keys.items() if value is not None]


class Effective(BaseModel):
    """What a launch runs with: the params, their file text, and how they differ from the file."""

    params: Params
    text: str
    sets: list[str]  # every assignment applied, run_id included
    changed: bool  # the run's params differ from the file's


def effective(params_file: Path, overrides: RunOverrides) -> Effective:
    """The params file with `overrides` applied and validated; ConfigError names the file and the key."""
    doc = load_doc(params_file)
    base = Params.model_validate(yaml.safe_load(render(doc, str(params_file))))
    sets = overrides.sets(base.method)
    if overrides.overlap is not None and overrides.rounds is None:  # `dvc exp run -S` sets overlap alone, so the
        sets.append(f"rounds={len(base.rounds)}")  # reproduction must also carry the rounds list that follows it
    for s in sets:
        apply_set(doc, s)
    source = f"{params_file} with the run's parameters ({', '.join(sets)})" if sets else str(params_file)
    params = Params.model_validate(yaml.safe_load(render(doc, source)))
    changed = params != base
    run_id = overrides.run_id
    if run_id is None and changed:  # settings of its own: outputs of its own, the same id for the same form
        run_id = f"{base.run_id}-{hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:8]}"
    if run_id is not None and run_id != base.run_id:
        sets.append(f"run_id={json.dumps(run_id)}")
        apply_set(doc, sets[-1])
        changed = True
    text = render(doc, source) if sets else params_file.read_text(encoding="utf-8")  # nothing set: the bytes
    return Effective(params=Params.model_validate(yaml.safe_load(text)), text=text, sets=sets, changed=changed)


def dvc_exp_command(eff: Effective) -> str:
    """`dvc exp run -S …` that reproduces the launch from params.yaml, in DVC's (Hydra's) override grammar."""
    args = []
    for s in eff.sets:  # `++`: set the key whether or not params.yaml already holds it
        key, _, raw = s.partition("=")
        value = getattr(eff.params, key) if key == "rounds" else json.loads(raw)
        args.append('-S "++' + re.sub(r'(["$`\\\\])', r"\\\1", f"{key}={_hydra(value)}") + '"')
    return " ".join(["dvc exp run", *args])


def _hydra(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(value)
