"""Writing params files: the round list, `--set` overrides and the shipped presets.

Edits go through ruamel's round-trip YAML, so a user's comments and key order survive. DVC's
`foreach` needs one item per round, so a preset may say `rounds: 500` and the writer expands it;
`params.yaml` itself always holds the list, which `ropd rounds N` rewrites.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ropd.io import atomic_write_text
from ropd.params import ConfigError, Params, describe_errors, round_items

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)")


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    y.representer.add_representer(float, _represent_float)
    return y


def _represent_float(rep, value: float):
    """`3.0e-05`, not `3e-05`: PyYAML (YAML 1.1, which `load_params` uses) reads an exponent without a dot
    as a string, while DVC's YAML 1.2 reads a float; with the dot both read the same number."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    if not math.isfinite(value):
        return rep.represent_float(value)
    return rep.represent_scalar("tag:yaml.org,2002:float", text)


def _set_rounds(node: CommentedMap, n: int) -> None:
    """Replace the round list, keeping the old list's comments (its header, the blank line after it)."""
    new, old = round_seq(n, bool(node.get("overlap", False))), node.get("rounds")
    if isinstance(old, CommentedSeq):
        new.ca.comment, new.ca.end = old.ca.comment, old.ca.end
    node["rounds"] = new


def round_seq(n: int, overlap: bool) -> CommentedSeq:
    """`[{r: 0, next: 1, policy: 0}, …]` for n rounds, each item in flow style on its own line."""
    if n < 1:
        raise ConfigError(f"rounds: {n} is not a number of rounds; ask for at least 1")
    seq = CommentedSeq()
    for item in round_items(n, overlap):
        flow = CommentedMap(item)
        flow.fa.set_flow_style()
        seq.append(flow)
    return seq


def apply_set(doc: CommentedMap, assignment: str) -> None:
    """One `dotted.key=value` override, the value read as YAML (`grpo.lr=2e-6`, `eval.every=5`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: the value is not YAML ({exc})") from exc
    if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
        value = float(value)  # `2e-6` is a float in YAML 1.2 and in DVC's `-S`; YAML 1.1 left it a string
    node = doc
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = CommentedMap()
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} holds a value, not a mapping")
        node = child
    if key.strip() == "rounds" and isinstance(value, int):
        _set_rounds(node, value)
    else:
        node[leaf] = value
    if key.strip() == "overlap" and isinstance(doc.get("rounds"), list):  # each round's policy follows the switch
        _set_rounds(doc, len(doc["rounds"]))


def render(doc: CommentedMap, source: str) -> str:
    """The document as text, after checking it against the params model (errors name `source`)."""
    if isinstance(doc.get("rounds"), int):
        _set_rounds(doc, doc["rounds"])
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    text = buf.getvalue()
    try:
        Params.model_validate(yaml.safe_load(text) or {})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from exc
    return text


def load_doc(path: Path) -> CommentedMap:
    try:
        doc = _yaml().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found") from exc
    except Exception as exc:  # ruamel raises its own YAMLError tree
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return doc


def edit_params(path: Path, sets: list[str]) -> Params:
    """Apply `sets` to the params file in place (atomically, comments kept) and return the validated result."""
    doc = load_doc(path)
    for s in sets:
        apply_set(doc, s)
    text = render(doc, str(path))
    atomic_write_text(text, path)
    return Params.model_validate(yaml.safe_load(text))


def preset_path(name: str) -> Path:
    """A shipped preset by name (`paper`), or a path to any preset file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset {name!r}; shipped presets: {', '.join(shipped) or 'none'}")
    return path


def load_preset(name: str, sets: list[str] = ()) -> tuple[str, Params]:
    """A preset with overrides, as params-file text and as validated params."""
    path = preset_path(name)
    doc = load_doc(path)
    for s in sets:
        apply_set(doc, s)
    text = render(doc, str(path))
    return text, Params.model_validate(yaml.safe_load(text))
