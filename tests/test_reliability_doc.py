"""docs/reliability.md names only tests that exist: a renamed or deleted test breaks this, not the doc silently."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
REF = re.compile(r"tests/([a-z_0-9]+)\.py::(test_[a-z0-9_]+)")


def test_every_referenced_test_exists() -> None:
    refs = sorted(set(REF.findall(DOC.read_text(encoding="utf-8"))))
    assert len(refs) > 50
    missing = [f"tests/{mod}.py::{name}" for mod, name in refs
               if not callable(getattr(importlib.import_module(f"tests.{mod}"), name, None))]
    assert missing == []
