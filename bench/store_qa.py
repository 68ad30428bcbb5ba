"""The QA stage's dedup and flags in DuckDB (the code `ropd qa` runs) against the same checks in pandas.

A synthetic round of N criteria rows (10 per rubric, one 14-word sentence each) with unit-norm random
FLOAT[dim] embeddings: FLOAT[32] by default; `--dim 384` (MiniLM's width) fits in memory at 1M rows,
but then both engines spend most of their time on the cosines themselves. A few rows are exact
duplicates (same text up to case and punctuation), near duplicates (a neighbour's vector plus small
noise) or quote the prompt's reference answer. Both engines start from
the data in their own memory (a DuckDB table; a DataFrame plus a numpy matrix) and compute the same
things: duplicate pairs within each rubric (normalised text equal, or cosine ≥ threshold), the
merges (one shared resolver), the clean criteria, the per-rubric flags and their counts. The results
are checked to be identical. Each engine runs in a forked child so its peak memory is its own, and
the fastest of --repeat runs counts for each.

    .venv/bin/python bench/store_qa.py [--rows 1000000] [--dim 32] [--threads 0] [--repeat 3]

The last stdout line is one JSON object:
{"rows": n, "duckdb_s": a, "pandas_s": b, "ratio": b/a, "dim": d, "duckdb_peak_mb": m1, "pandas_peak_mb": m2, ...}.
Target: ratio ≥ 5.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ropd.eval.correctness import quote_pattern
from ropd.store.qa import HEAVY_POINTS, QAConfig, dedup_and_flag, resolve_merges

PER_RUBRIC = 10
WORDS_PER_CRITERION = 14  # ≈ 95 characters: one sentence, as LLM-written criteria are (the paper's run 80–200)
WORDS = ["computes", "states", "checks", "labels", "explains", "derives", "verifies", "answer", "total", "result",
         "step", "each", "final", "value", "quantity", "units", "sum", "product", "difference", "ratio", "pack",
         "item", "price", "count", "order", "reason", "method", "clear"]


def synthesise(rows: int, dim: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Criteria rows (rk, position, criterion_id, points, text, ref_literal, ref_pattern) and their embeddings."""
    rng = np.random.default_rng(seed)
    n_rub = rows // PER_RUBRIC
    rk = np.repeat(np.arange(n_rub, dtype=np.int64), PER_RUBRIC)
    position = np.tile(np.arange(PER_RUBRIC, dtype=np.int32), n_rub)
    words = rng.integers(0, len(WORDS), size=(rows, WORDS_PER_CRITERION))
    text = np.array([" ".join(WORDS[w] for w in row) for row in words], dtype=object)
    points = rng.choice([1, 2, 2, 3, 4, 5], size=rows).astype(np.int32)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    kind = rng.random(rows)
    later = position > 1
    exact = later & (kind < 0.02)  # copies position 0's text, shouted and punctuated
    text[exact] = [t.upper() + "!" for t in text[np.flatnonzero(exact) - position[exact]]]
    near = later & (kind >= 0.02) & (kind < 0.04)  # position 1's vector plus a little noise
    src = np.flatnonzero(near) - position[near] + 1
    emb[near] = emb[src] + 0.15 * np.linalg.norm(emb[src], axis=1, keepdims=True) / np.sqrt(dim) * \
        rng.standard_normal((int(near.sum()), dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    answers = (rk * 7 + 3).astype(str)
    quoting = kind > 0.99
    text[quoting] = [f"{t} so the final answer is {a}." for t, a in zip(text[quoting], answers[quoting], strict=True)]
    per_rubric = pd.Series([str(i * 7 + 3) for i in range(n_rub)])
    patterns = per_rubric.map(quote_pattern)
    df = pd.DataFrame({"rk": rk, "position": position, "criterion_id": pd.Series(position).map(lambda p: f"c{p + 1}"),
                       "points": points, "text": text,
                       "ref_literal": per_rubric.to_numpy()[rk], "ref_pattern": patterns.to_numpy()[rk]})
    return df, emb


def best_of(repeat: int, fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The fastest of `repeat` runs (the others measure interference); every run must give the same result."""
    times, results = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - t0)
    if any(r != results[0] for r in results):
        raise RuntimeError("repeated runs disagree")
    return results[0], min(times)


def duckdb_qa(df: pd.DataFrame, emb: np.ndarray, cfg: QAConfig, threads: int,
              repeat: int) -> tuple[dict[str, Any], float]:
    """Load the round into DuckDB (untimed), then time exactly what `run_qa` runs: `dedup_and_flag`."""
    con = duckdb.connect(config={"threads": threads} if threads else {})
    table = pa.Table.from_pandas(df, preserve_index=False).append_column(
        "emb", pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]))
    con.register("_src", table)
    con.execute("CREATE TABLE crit AS SELECT * FROM _src")
    con.unregister("_src")
    del table

    def checks() -> dict[str, Any]:
        merges, flags = dedup_and_flag(con, cfg)
        counts = con.execute("SELECT count(*) FROM clean").fetchone()
        return summary(merges, flags, counts[0] if counts else 0)

    return best_of(repeat, checks)


def pandas_checks(df: pd.DataFrame, emb: np.ndarray, cfg: QAConfig) -> dict[str, Any]:
    """The same checks, written as a pandas user would: str methods, a self-merge, numpy for the cosines."""
    c = df[["rk", "position", "points"]].copy()
    c["norm"] = df["text"].str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()  # as NORM_SQL
    c["row"] = np.arange(len(c))
    pairs = c.merge(c, on="rk", suffixes=("_a", "_b"))
    pairs = pairs[pairs["position_a"] < pairs["position_b"]]
    ia, ib = pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()
    sim = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), 500_000):  # chunked: gathering all pairs' vectors at once would not fit in memory
        sim[s:s + 500_000] = np.einsum("ij,ij->i", emb[ia[s:s + 500_000]], emb[ib[s:s + 500_000]])
    pairs = pairs.assign(exact=pairs["norm_a"].to_numpy() == pairs["norm_b"].to_numpy(), sim=sim)
    pairs = pairs[pairs["exact"] | (pairs["sim"] >= cfg.near_dup_threshold)]
    pairs = pairs.rename(columns={"position_a": "pos_a", "points_a": "pts_a", "position_b": "pos_b",
                                  "points_b": "pts_b"}).sort_values(["rk", "pos_a", "pos_b"])
    merges = resolve_merges(pairs)
    dropped = pd.MultiIndex.from_frame(merges[["rk", "dropped_position"]])
    keep = ~pd.MultiIndex.from_frame(df[["rk", "position"]]).isin(dropped)
    clean = df[keep].copy()
    clean["position"] = clean.groupby("rk").cumcount()
    lowered = clean["text"].str.lower()
    quotes = pd.Series(False, index=clean.index)
    candidates = np.array([isinstance(lit, str) and lit in t for lit, t in zip(clean["ref_literal"], lowered,
                                                                               strict=True)])
    quotes[candidates] = [re.search(p, t) is not None for p, t in
                          zip(clean.loc[candidates, "ref_pattern"], clean.loc[candidates, "text"], strict=True)]
    clean["quotes"] = quotes
    clean["heavy"] = clean["points"] >= HEAVY_POINTS
    clean["one"] = clean["points"] == 1
    g = clean.groupby("rk")
    flags = pd.DataFrame({"n_criteria": g.size(), "max_score": g["points"].sum(), "heavy": g["heavy"].sum(),
                          "all_min_points": g["one"].all(), "quotes_reference": g["quotes"].any()})
    flags["too_few_criteria"] = flags["n_criteria"] < cfg.min_criteria
    flags["too_many_heavy"] = flags["heavy"] > cfg.max_heavy
    return summary(merges, flags.reset_index(), len(clean))


def summary(merges: pd.DataFrame, flags: pd.DataFrame, n_clean: int) -> dict[str, Any]:
    """What both engines must agree on."""
    return {"merges": len(merges), "exact": int((merges["kind"] == "exact").sum()),
            "merge_keys": sorted(map(tuple, merges[["rk", "kept_position", "dropped_position"]].to_numpy().tolist())),
            "criteria_out": int(n_clean),
            **{f: int(flags[f].sum()) for f in ("too_few_criteria", "too_many_heavy", "all_min_points",
                                                 "quotes_reference")}}


def in_child(fn: Callable[[], tuple[dict[str, Any], float]]) -> tuple[dict[str, Any], float, float]:
    """Run `fn` in a forked child; return its result, its time and its peak RSS in MiB (from wait4)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            payload = pickle.dumps(fn())
        except BaseException as e:  # report the failure to the parent instead of dying silently
            payload = pickle.dumps(e)
        with os.fdopen(write, "wb") as f:
            f.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = pickle.loads(f.read())
    _, status, usage = os.wait4(pid, 0)
    if isinstance(data, BaseException) or status != 0:
        raise RuntimeError(f"child failed: {data!r}")
    result, elapsed = data
    return result, elapsed, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="criteria rows (10 per rubric)")
    ap.add_argument("--dim", type=int, default=32, help="embedding width (MiniLM's is 384)")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads; 0 = all cores")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; the fastest counts")
    args = ap.parse_args()
    cfg = QAConfig()
    t0 = time.perf_counter()
    df, emb = synthesise(args.rows, args.dim)
    print(f"synthesised {len(df):,} criteria × FLOAT[{args.dim}] ({emb.nbytes / 2**20:.0f} MiB of embeddings) "
          f"in {time.perf_counter() - t0:.1f}s on {os.cpu_count()} cores", flush=True)
    duck, duck_s, duck_mb = in_child(lambda: duckdb_qa(df, emb, cfg, args.threads, args.repeat))
    print(f"duckdb: {duck_s:.2f}s (best of {args.repeat}), peak RSS {duck_mb:.0f} MiB", flush=True)
    pand, pand_s, pand_mb = in_child(lambda: best_of(args.repeat, lambda: pandas_checks(df, emb, cfg)))
    print(f"pandas: {pand_s:.2f}s (best of {args.repeat}), peak RSS {pand_mb:.0f} MiB", flush=True)
    if duck != pand:
        diff = {k: (duck[k], pand[k]) for k in duck if duck[k] != pand[k] and k != "merge_keys"}
        sys.exit(f"the engines disagree: {diff or 'on which criteria merge'}")
    print(f"agree: {duck['merges']} merges ({duck['exact']} exact), {duck['criteria_out']:,} criteria out, flags "
          f"too_many_heavy {duck['too_many_heavy']}, all_min_points {duck['all_min_points']}, "
          f"quotes_reference {duck['quotes_reference']}, too_few_criteria {duck['too_few_criteria']}")
    print(json.dumps({"rows": len(df), "duckdb_s": round(duck_s, 3), "pandas_s": round(pand_s, 3),
                      "ratio": round(pand_s / duck_s, 2), "dim": args.dim, "duckdb_peak_mb": round(duck_mb),
                      "pandas_peak_mb": round(pand_mb), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
