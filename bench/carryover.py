"""`make bench-carryover`: how fast are two SAE versions matched (selfexplain.carryover)?

Times `match_features` (both directions of nearest neighbours, top-3, blocked matmuls) on random
decoders that share half their directions (perturbed), at the sizes users meet: the default SAE
(4096 x 576), a Gemma-2B 16k SAE (16384 x 2304) and a 65k SAE on d 576; checks the planted shared
rows are found. Writes bench/carryover.json. A benchmark, never a unit test.

    python -m bench.carryover [--sizes 4096:576,16384:2304,65536:576]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def pair(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(old (n, d), new (n, d), planted: new row i is old row planted[i], or -1)."""
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(n, d, generator=g)
    new = torch.randn(n, d, generator=g)
    shared = torch.randperm(n, generator=g)[: n // 2]
    targets = torch.randperm(n, generator=g)[: n // 2]
    new[targets] = old[shared] + 0.2 * torch.randn(n // 2, d, generator=g)  # cosine ~0.98
    planted = torch.full((n,), -1)
    planted[targets] = shared
    return old, new, planted


def main() -> None:
    from selfexplain.carryover import match_features

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4096:576,16384:2304,65536:576", help="n:d,...")
    parser.add_argument("--out", default=str(HERE / "carryover.json"))
    args = parser.parse_args()
    rows = []
    for spec in args.sizes.split(","):
        n, d = (int(x) for x in spec.split(":"))
        old, new, planted = pair(n, d)
        began = time.perf_counter()
        matches = match_features(new, old, threshold=0.9, k=3)
        seconds = time.perf_counter() - began
        found = torch.where(matches.matched, matches.source[:, 0], torch.full_like(planted, -1))
        row = {"n_old": n, "n_new": n, "d_model": d, "seconds": round(seconds, 2),
               "gflop": round(2 * 2 * n * n * d / 1e9, 1), **matches.summary(),
               "planted": int((planted >= 0).sum()),
               "planted_found": int(((found == planted) & (planted >= 0)).sum()),
               "false_matches": int(((found != planted) & (found >= 0)).sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
