"""`python tests/killpoint.py TARGET ropd-args...`: run the `ropd` CLI and SIGKILL it just before it
commits the output named TARGET (the rename of its finished temporary sibling, see ropd/io.py).

That is the worst moment a crash can pick: all of the stage's work is done, earlier outputs are
published, and this one sits complete under a temporary name. Before dying, the process appends the
path it was about to publish to $KILLPOINT_LOG, so the test can check what it left behind.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    target, args = sys.argv[1], sys.argv[2:]
    ours = f".{target}.{os.getpid()}."  # ropd.io names its temporaries .<name>.<pid>.<random>
    real_replace, real_rename = os.replace, Path.rename

    def die_before(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(src).name.startswith(ours):
            with open(os.environ["KILLPOINT_LOG"], "a") as log:
                log.write(f"{dst}\t{src}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *a, **kw):
        die_before(src, dst)
        return real_replace(src, dst, *a, **kw)

    def rename(self, dst):
        die_before(self, dst)
        return real_rename(self, dst)

    os.replace, Path.rename = replace, rename
    from ropd.cli import app

    sys.argv = ["ropd", *args]
    app()


if __name__ == "__main__":
    main()
