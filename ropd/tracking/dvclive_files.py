"""DVCLive's copy of the headline figures: the files `dvc exp show` and `dvc plots` read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropd.tracking import HEADLINE


def write_dvclive(history: list[dict[str, Any]], out: Path) -> None:
    """The headline figures of every round, step = round, rewritten from scratch each time."""
    from dvclive import Live

    class FilesOnly(Live):
        def _init_dvc(self) -> None:
            """No repository lookup: dvc.yaml already declares these files, and DVCLive's own lookup fails in a
            git repository with no commit yet (scmrepo's SCMError escapes it) and runs `dvc init` in a git
            repository without DVC."""
            self._dvc_file = None

    with FilesOnly(dir=str(out), resume=False, save_dvc_exp=False, dvcyaml=None) as live:
        for row in history:
            live.step = int(row["round"])
            for key in HEADLINE:
                if isinstance(row.get(key), int | float):
                    live.log_metric(key, float(row[key]))
            live.make_summary()  # metrics.json holds the last round's values
    for key in HEADLINE:  # a figure no round had (AUC without labels, spend unpriced): an empty series, so
        tsv = out / "plots" / "metrics" / f"{key}.tsv"  # a dvc.yaml plot of it draws nothing rather than fail
        if not tsv.is_file():
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{key}\n")
