"""`make bench-errors`: how fast does each bad input of the CLI get its answer?

Runs every case below as a fresh `selfexplain` process against the embedded default model and
SAE (the path a user takes), and records its wall time, exit status and first error line. Writes
bench/errors.json and prints a table. A benchmark, never a unit test: the timings depend on the
machine. The default model's de-quantised cache is built first (outside the timings), as it is
after a user's first run.

    python -m bench.errors [--limit-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(what is wrong, CLI arguments), each expected to end in one `error:` line, exit 2."""
    import numpy as np

    np.save(tmp / "narrow.npy", np.ones((2, 24), dtype=np.float32))
    np.save(tmp / "nan.npy", np.full((1, 576), np.nan, dtype=np.float32))
    (tmp / "notduck.duckdb").write_bytes(b"this is not a database" * 100)
    (tmp / "corpus").mkdir()
    return [
        ("vector file missing", ["explain", "--vector", "/nonexistent.npy"]),
        ("vector with NaN", ["explain", "--vector", str(tmp / "nan.npy")]),
        ("vector width != model", ["explain", "--vector", str(tmp / "narrow.npy")]),
        ("feature out of range", ["explain", "--sae", "default", "--features", "999999"]),
        ("feature range reversed", ["explain", "--sae", "default", "--features", "9-2"]),
        ("feature list empty", ["explain", "--sae", "default", "--features", ","]),
        ("unknown SAE release", ["explain", "--sae", "no-such-release/blocks.6", "--features", "0"]),
        ("unknown SAE spec", ["explain", "--sae", "no-such-sae", "--features", "0"]),
        ("scale grid decreasing", ["explain", "--word", " dog", "--scales", "3,1"]),
        ("injection layer beyond model", ["explain", "--word", " dog", "--injection-layer", "99"]),
        ("unknown model folder", ["explain", "--model", "/no/such/model", "--word", " dog"]),
        ("relabel: feature out of range", ["relabel", "--sae", "default", "--features", "999999",
                                           "--warehouse", str(tmp / "w.duckdb")]),
        ("relabel: not a warehouse", ["relabel", "--sae", "default", "--features", "0",
                                      "--warehouse", str(tmp / "notduck.duckdb")]),
        ("relabel: zero samples", ["relabel", "--sae", "default", "--features", "0",
                                   "--samples", "0", "--warehouse", str(tmp / "w.duckdb")]),
        ("evaluate: unknown method", ["evaluate", "--methods", "nope"]),
        ("evaluate: unknown SAE", ["evaluate", "--suite", "real", "--sae", "no-such-sae"]),
        ("train-sae: corpus missing", ["train-sae", "--corpus", "/nonexistent",
                                       "--out", str(tmp / "sae")]),
        ("train-sae: empty corpus", ["train-sae", "--corpus", str(tmp / "corpus"),
                                     "--out", str(tmp / "sae")]),
        ("show: feature out of range", ["show", "--sae", "default", "--feature", "999999"]),
    ]


def run_case(exe: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
    began = time.perf_counter()
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=600,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return {"seconds": round(seconds, 2), "exit": proc.returncode,
            "error": errors[0] if errors else proc.stderr.strip().splitlines()[-1:] or "",
            "one_error_line": len(errors) == 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=HERE / "errors.json")
    args = parser.parse_args(argv)
    exe = str(Path(sys.executable).with_name("selfexplain"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    from selfexplain.models import load_model

    load_model("default")  # the de-quantised cache exists after a user's first run
    rows = []
    with tempfile.TemporaryDirectory(prefix="selfexplain-bench-errors-") as tmp:
        for name, case_args in cases(Path(tmp)):
            row = {"case": name, "args": case_args, **run_case(exe, case_args, env)}
            rows.append(row)
            print(f"{row['seconds']:6.2f} s  exit {row['exit']}  {name}: {row['error']}",
                  flush=True)
    slow = [r["case"] for r in rows if r["seconds"] >= args.limit_seconds]
    wrong = [r["case"] for r in rows if r["exit"] != 2 or not r["one_error_line"]]
    summary = {"cases": len(rows), "max_seconds": max(r["seconds"] for r in rows),
               "over_limit": slow, "not_one_error_line": wrong,
               "limit_seconds": args.limit_seconds, "cpu_count": os.cpu_count()}
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if not slow and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
