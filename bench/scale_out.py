"""`make bench-scale-out`: the same latents labelled by `relabel` in one process, and by
`scale-out` with one and with two warm workers on this machine, each a fresh command into a fresh
warehouse. Writes bench/scale_out.json.

`per_feature_ratio_1_worker` is the cost per latent of scale-out with one worker over relabel's
(bar: <= 1.25), each from the difference between a run over `--features` and one over
`--more-features`: fixed costs (the cluster's start, the worker run's process and model load) cancel
out; the whole commands' ratios are reported beside it. Labels are
compared with the one-process run's: a worker with the same thread count gives the same labels;
two workers on this machine get half the threads each, and float32 sums in another order can
tip a sample (`features_labelled_differently`, per run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).with_name("scale_out.json")
ROOT = Path(__file__).resolve().parents[1]


def command(args: list[str], log: Path) -> tuple[float, str]:
    """Run `selfexplain ARGS`; (wall seconds, output). A failure stops the bench with its log."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - began
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"selfexplain {' '.join(args)} failed ({done.returncode}); see {log}\n"
                 + (done.stdout + done.stderr)[-3000:])
    return seconds, done.stdout + done.stderr


def cluster_seconds(output: str) -> float:
    match = re.search(r"cluster ready in ([\d.]+) s", output)
    return float(match.group(1)) if match else float("nan")


def labels(warehouse: Path) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute("SELECT feature, label, recovered_token, failed FROM v_feature_labels "
                           "ORDER BY feature").fetchall()


def count(features: str) -> int:
    from selfexplain.saes import parse_features

    return len(parse_features(features))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="256-319", help="the smaller run's latents")
    parser.add_argument("--more-features", default="256-383",
                        help="the larger run's latents (a superset): the difference gives the "
                        "cost per latent, free of each command's fixed start-up")
    parser.add_argument("--shard-size", type=int, default=8,
                        help="both sides' shards (default: scale-out's own)")
    parser.add_argument("--shards-per-run", type=int, default=4,
                        help="scale-out's parts, in shards (default: scale-out's own)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        tmp = Path(tmp)
        warehouses: dict[str, Path] = {}

        def side(name: str, features: str, workers: int | None) -> None:
            warehouse = tmp / f"{name}.duckdb"
            common = ["--features", features, "--shard-size", str(args.shard_size),
                      "--warehouse", str(warehouse)]
            print(f"{name}: features {features} ...", flush=True)
            if workers is None:
                seconds, _ = command(["relabel", *common], tmp / f"{name}.log")
                runs[name] = {"features": features, "seconds": round(seconds, 1)}
            else:
                seconds, output = command(["scale-out", *common, "--workers", str(workers),
                                           "--shards-per-run", str(args.shards_per_run),
                                           "--out-dir", str(tmp / f"{name}-shards")],
                                          tmp / f"{name}.log")
                runs[name] = {"features": features, "workers": workers,
                              "threads_per_worker": max(1, (os.cpu_count() or 1) // workers),
                              "seconds": round(seconds, 1),
                              "cluster_start_seconds": round(cluster_seconds(output), 1)}
            warehouses[name] = warehouse

        side("one_process", args.features, None)
        side("1_worker", args.features, 1)
        side("one_process_more", args.more_features, None)
        side("1_worker_more", args.more_features, 1)
        side("2_workers_more", args.more_features, 2)
        reference = {"": labels(warehouses["one_process"]),
                     "_more": labels(warehouses["one_process_more"])}
        for name in ("1_worker", "1_worker_more", "2_workers_more"):
            mine = reference["_more" if name.endswith("_more") else ""]
            runs[name]["features_labelled_differently"] = [
                a[0] for a, b in zip(mine, labels(warehouses[name])) if a != b]

    added = count(args.more_features) - count(args.features)
    per_latent = {name: (runs[f"{name}_more"]["seconds"] - runs[name]["seconds"]) / added
                  for name in ("one_process", "1_worker")}
    result = {
        "shard_size": args.shard_size, "shards_per_run": args.shards_per_run, "runs": runs,
        "seconds_per_latent": {k: round(v, 3) for k, v in per_latent.items()},
        "per_feature_ratio_1_worker": round(per_latent["1_worker"] / per_latent["one_process"], 3),
        f"whole_command_ratio_1_worker_{count(args.features)}":
            round(runs["1_worker"]["seconds"] / runs["one_process"]["seconds"], 3),
        f"whole_command_ratio_1_worker_{count(args.more_features)}":
            round(runs["1_worker_more"]["seconds"] / runs["one_process_more"]["seconds"], 3),
        "two_workers_over_one": round(runs["2_workers_more"]["seconds"]
                                      / runs["1_worker_more"]["seconds"], 3),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["per_feature_ratio_1_worker"] <= 1.25
    print(f"per_feature_ratio_1_worker {result['per_feature_ratio_1_worker']} "
          f"({'meets' if ok else 'misses'} the 1.25 bar); two workers / one "
          f"{result['two_workers_over_one']}; written to {args.out}")
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
