"""A real third-party OpenAI-compatible server for tests and benches: llama.cpp's, serving the packaged
SmolLM2 GGUF. Nobody here wrote it, so it checks ropd against a server's own refusals and dialects.

It is not a dependency: build it in a venv of its own (docs/models.md, "llama.cpp's server") and name
that venv's python in `ROPD_LLAMACPP_PYTHON`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "ROPD_LLAMACPP_PYTHON"


def llamacpp_python() -> str | None:
    """The python of a venv with `llama-cpp-python[server]`, from `ROPD_LLAMACPP_PYTHON`, if it is usable."""
    path = os.environ.get(ENV)
    return path if path and Path(path).is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llamacpp_server(python: str, gguf: Path, *, n_ctx: int = 8192, threads: int = 2,
                    start_timeout_s: float = 180.0, log: Path | None = None) -> Iterator[str]:
    """Serve `gguf` on a free loopback port; yields the base URL once `/v1/models` answers."""
    port = _free_port()
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)],
                            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode} before answering"
                                   + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:  # loopback only
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not answer within {start_timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]
