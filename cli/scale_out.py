"""`selfexplain scale-out`: label features with N Prefect workers on this machine.

Starts a Prefect server, a process work pool and N workers (flows/cluster.py), registers the
`shard-worker` deployment from this checkout, runs the `scale-out` flow (one warm `shard-worker`
run per worker leases shards and writes Parquet under --out-dir; one writer merges into the
warehouse) and stops everything again. A worker that dies mid-shard costs that shard a rerun
elsewhere; rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.explain import add_config_arguments
from selfexplain.locations import DEFAULT_WAREHOUSE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scale-out",
        help="label features with N Prefect workers (local server, work pool, workers)",
        description="Start a Prefect server, a process work pool and --workers workers, run the "
        "scale-out flow (shards fan out as child runs writing Parquet, one writer merges into "
        "--warehouse), then stop them. With --api-url, use that server and its workers instead.",
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    parser.add_argument("--sae", default="default",
                        help="`default`, RELEASE/SAE_ID, a sae-lens folder, or a .safetensors")
    parser.add_argument("--features", default="0-127", help="indices like 0-127 or 0-3,40")
    parser.add_argument("--all-features", action="store_true", help="every latent of the SAE")
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="DuckDB file")
    parser.add_argument("--out-dir", default="shards", help="Parquet shards (default shards/)")
    parser.add_argument("--shard-size", type=int, default=8, help="features per shard")
    parser.add_argument("--shards-per-run", type=int, default=4,
                        help="shards a worker leases at once, labelled in one relabel child run "
                        "(default 4: a child run costs about 2 s of its own)")
    parser.add_argument("--stale-after", type=float, default=60.0,
                        help="seconds without a heartbeat before a shard's worker counts as "
                        "dead and the shard is submitted again (default 60)")
    parser.add_argument("--api-url", help="an existing Prefect server whose workers serve the "
                        "`selfexplain-local` pool; nothing is started")
    parser.add_argument("--worker-runs", type=int, help="shard-worker runs to submit (default: "
                        "--workers): with --api-url, how many of that pool's workers to use")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cli.relabel import build_request
    from selfexplain.errors import InputError
    from selfexplain.leases import TOUCH_SECONDS

    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: at least one worker is needed")
    if args.shards_per_run < 1:
        raise InputError(f"--shards-per-run {args.shards_per_run}: at least one")
    if args.worker_runs is not None and args.worker_runs < 1:
        raise InputError(f"--worker-runs {args.worker_runs}: at least one")
    if args.stale_after <= 2 * TOUCH_SECONDS:  # ShardBoard.create's bound, told before start-up
        raise InputError(f"--stale-after {args.stale_after:g}: more than {2 * TOUCH_SECONDS:g} s "
                         f"(workers touch their lease every {TOUCH_SECONDS:g} s)")
    args.layer_threshold = False
    args.carry_over = False
    args.matched = args.match_threshold = None
    out_dir = str(Path(args.out_dir).expanduser().resolve())
    args.out_dir = None
    request = build_request(args)  # validates every flag before anything slow starts
    from flows.cluster import run_scale_out  # Prefect lives in flows/, never in the core

    began = time.perf_counter()
    summary = run_scale_out(request, out_dir, workers=args.workers, api_url=args.api_url,
                            worker_runs=args.worker_runs, shards_per_run=args.shards_per_run,
                            stale_after_s=args.stale_after,
                            announce=lambda line: print(line, flush=True))
    print(f"done in {time.perf_counter() - began:.0f} s: merged {summary['folders']} Parquet "
          f"folders ({summary['rows']} rows) from {out_dir} into {request.warehouse}")
    print(f'query it: selfexplain sql "SELECT feature, label FROM v_feature_labels ORDER BY '
          f'feature LIMIT 20" --warehouse {request.warehouse}')
    return 0
