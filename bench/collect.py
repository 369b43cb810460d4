"""`make bench-collect`: how fast `collect` reads an SAE's statistics, and that memory stays flat.

Collects the default SAE's statistics from a bare copy of it (cfg.json and weights only, so
nothing shipped is reused) over the embedded corpus, into a temporary cache, in a fresh process
per size: 1M training tokens (the whole 4,096 latents) and a quarter of that, to show the peak
memory does not grow with the tokens read. Writes bench/collect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).with_name("collect.json")


def one(tokens: int, heldout: int, precision: str) -> dict:
    """Runs in a child process: collect, then report seconds and peak RSS."""
    import torch

    from selfexplain.collect import CollectConfig
    from selfexplain.models import load_model
    from selfexplain.saes import DEFAULT_SAE_DIR
    from selfexplain.statstore import collect_statistics

    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare_default_sae"
        bare.mkdir()
        for name in ("cfg.json", "sae_weights.safetensors"):
            shutil.copy(DEFAULT_SAE_DIR / name, bare / name)
        os.environ["SELFEXPLAIN_STATS"] = str(Path(tmp) / "stats")
        lm = load_model("default")
        began = time.perf_counter()
        result = collect_statistics(lm, str(bare), "default", CollectConfig(
            tokens=tokens, heldout_tokens=heldout, dtype=precision, checkpoint_seconds=30))
        seconds = time.perf_counter() - began
        m = result.manifest
        sizes = {p.name: p.stat().st_size for p in result.folder.iterdir()}
    return {"train_tokens": m["train_tokens"], "heldout_tokens": m["heldout_tokens"],
            "latents": m["d_sae"], "seconds": round(seconds, 1),
            "tokens_per_second": round((m["train_tokens"] + m["heldout_tokens"]) / seconds),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "dead_latents": m["dead_latents"], "single_token_latents": m["single_token_latents"],
            "output_bytes": sizes, "threads": torch.get_num_threads(), "precision": precision}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--heldout-tokens", type=int, default=250_000)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.tokens, args.heldout_tokens, args.precision)))
        return 0
    runs = []
    for tokens, heldout in ((args.tokens // 4, args.heldout_tokens // 4),
                            (args.tokens, args.heldout_tokens)):
        out = subprocess.run([sys.executable, "-m", "bench.collect", "--child", "--tokens",
                              str(tokens), "--heldout-tokens", str(heldout), "--precision",
                              args.precision], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    full = runs[-1]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    result = {
        "what": "selfexplain collect on a bare copy of the default SAE (4096 latents) over the "
                "embedded corpus, fresh process per size",
        "machine": {"cpu": cpu, "cores": os.cpu_count()},
        "runs": runs,
        "full_sae_minutes": round(full["seconds"] / 60, 2),
        "tokens_per_second": full["tokens_per_second"],
        "peak_rss_gib": full["peak_rss_gib"],
        "peak_rss_growth_4x_tokens": round(full["peak_rss_gib"] / runs[0]["peak_rss_gib"], 2),
        "target_minutes": 5,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
