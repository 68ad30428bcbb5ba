"""ropd against an OpenAI-compatible server nobody here wrote: llama.cpp's, serving the packaged SmolLM2.

Opt-in (the server builds from source in about 3 minutes): set ROPD_LLAMACPP_PYTHON to the python of a venv
holding `llama-cpp-python[server]` (docs/models.md). The server refuses `json_schema` with a 500 and takes
the schema inside `json_object`; `ropd demo --base-url` must judge every group through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ropd.cli import app
from ropd.config import RoleConfig
from ropd.llm.base import ChatRequest, run_closing
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.llm.strict_schema import strict_object
from ropd.models import SMOLLM2, packaged_file
from ropd.testing.llamacpp import ENV, llamacpp_python, llamacpp_server

PYTHON = llamacpp_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason=f"opt-in: set {ENV} to a python with llama-cpp-python[server]")


def test_demo_judges_every_group_through_llamacpp(tmp_path: Path) -> None:
    with llamacpp_server(PYTHON, packaged_file(SMOLLM2), log=tmp_path / "server.log") as url:  # type: ignore[arg-type]
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "run"), "--base-url", url,
                                          "--model", "smollm2", "--api-key-env", "ROPD_NO_KEY", "--max-in-flight",
                                          "2"], env={"COLUMNS": "200"})
        chat = OpenAICompatChat("verifier", RoleConfig(base_url=url, model="smollm2", api_key_env=None,
                                                       max_tokens=64))
        request = ChatRequest.for_role("verifier", chat.config, [{"role": "user", "content": "Say yes."}],
                                       json_schema=strict_object({"ok": {"type": "boolean"}}), schema_name="probe")
        reply = run_closing(chat.complete(request), chat)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["judge_error"] == 0 and summary["ok"] == summary["groups"], summary
    # its refusal of json_schema (a 500) stepped the ladder once, to its own dialect, which constrains
    assert reply.response_format == "json_object_schema" and isinstance(json.loads(reply.content)["ok"], bool)
