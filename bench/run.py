"""`make bench`: the original recipe and ours, side by side, in one run.

Each side runs in its own subprocess (so peak memory is its own) on the same model, the same SAE
features and the same planted words; the parent measures the matmul peak and prints one table.
Writes bench/results.json. A benchmark, never a unit test.

    python -m bench.run [--features 32] [--words 16] [--naive-features N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
BENCH_WORDS = (
    " dog", " red", " king", " water", " happy", " run", " book", " green", " car", " sleep",
    " music", " cold", " bread", " money", " fire", " tree", " ship", " angry", " winter", " phone",
    " teacher", " snow", " horse", " eat",
)


DEFAULT_SAE_FEATURES = 4096


def spread_features(count: int, total: int = DEFAULT_SAE_FEATURES) -> list[int]:
    """`count` features evenly spaced over the SAE (0, 64, 128, ... for 64 of 4096): the first
    features alone ran faster than the SAE as a whole (0.33 vs 0.40 s per feature, stop 22), so
    a projection from them was optimistic. The slow side's fewer features are spread the same."""
    return sorted({i * total // count for i in range(min(count, total))})


def word_named(word: str, texts: list[str]) -> bool:
    """Does any text name the word? Case-insensitive, as a whole word or a word's stem."""
    import re

    stem = word.strip().lower()
    pattern = re.compile(rf"\b{re.escape(stem)}", re.IGNORECASE)
    return any(pattern.search(text) for text in texts)


def run_side(side: str, features: list[int], words: list[str], threads: int,
             device: str = "cpu") -> dict[str, object]:
    """Explain `features` of the default SAE, then the planted `words`; time only the features."""
    torch.set_num_threads(threads)
    from bench.flops import GEMMA_2B, FlopCounter, projected_flops
    from selfexplain.config import ExplainConfig
    from selfexplain.models import load_model
    from selfexplain.statstore import load_sae
    from selfexplain.vectors import word_directions

    from bench.flops import matmul_peak_gflops

    # the original recipe in float32 as published; ours as the product runs (`--precision auto`:
    # bfloat16 where the device runs it natively, else float32)
    from selfexplain.models import resolve_precision

    precision = resolve_precision("auto", device) if side == "ours" else "float32"
    lm = load_model("default", dtype=getattr(torch, precision),
                    device=device)
    sae = load_sae("default")
    # The peak is measured in this process, under the same threads and machine load as the run
    # (before and after it; the better counts), so the fraction of peak compares like with like.
    dtype = next(lm.model.parameters()).dtype
    peak_before = matmul_peak_gflops(lm.d_model, lm.model.config.intermediate_size, dtype)
    directions, kept, _ = sae.unit_directions(features)
    planted = word_directions(lm, words, 2)
    if side == "naive":
        from bench.naive import naive_explain

        config = ExplainConfig.from_preset("faithful")
        timings = {"prefill": 0.0, "metrics": 0.0, "generation": 0.0, "selection": 0.0}
        with FlopCounter(lm.model) as counter:
            start = time.perf_counter()
            for direction in directions:
                naive_explain(lm, direction, config, timings)
            elapsed = time.perf_counter() - start
        planted_top = [naive_explain(lm, d, config, dict.fromkeys(timings, 0.0))["explanations"]
                       for d in planted]
    else:
        from selfexplain.explain import SelfExplainer

        config = ExplainConfig.from_preset("default", precision=precision)
        directions, kept, _ = sae.unit_directions(features, config.direction)  # typical inputs
        with FlopCounter(lm.model) as counter:
            start = time.perf_counter()
            explainer = SelfExplainer(lm, config)
            explainer.explain(directions, kept)
            elapsed = time.perf_counter() - start
        timings = dict(explainer.timings)
        results = explainer.explain(planted, list(range(len(words))), list(words))
        planted_top = [[c.text for c in r.explanations] for r in results]
    hits = sum(word_named(w, top) for w, top in zip(words, planted_top))
    peak = max(peak_before, matmul_peak_gflops(lm.d_model, lm.model.config.intermediate_size, dtype))
    return {
        "matmul_peak_gflops": peak,
        "side": side,
        "features": len(kept),
        "feature_ids": list(kept),
        "seconds": elapsed,
        "features_per_min": 60 * len(kept) / elapsed,
        "timings": timings,
        "gflop": counter.flops / 1e9,
        "tokens": counter.tokens,
        "logit_rows": counter.logit_rows,
        "gemma2b_gflop_per_feature": projected_flops(counter, **GEMMA_2B) / 1e9 / len(kept),
        "achieved_gflops": counter.flops / 1e9 / elapsed,
        "planted_hits": hits,
        "planted_n": len(words),
        "planted_score": hits / len(words),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dtype": str(next(lm.model.parameters()).dtype),
        "device": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "cpu",
        "config": config.model_dump(mode="json"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--features", type=int, default=32, help="SAE features per side")
    parser.add_argument("--naive-features", type=int, help="fewer for the slow side (default: same)")
    parser.add_argument("--words", type=int, default=len(BENCH_WORDS), help="planted words per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (make bench-gpu)")
    parser.add_argument("--side", choices=["naive", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    words = list(BENCH_WORDS[: args.words])
    if args.side:  # child process: one side, JSON on the last stdout line
        count = args.features
        print(json.dumps(run_side(args.side, spread_features(count), words, args.threads,
                                    args.device)))
        return
    sides = {}
    for side, count in (("ours", args.features), ("naive", args.naive_features or args.features)):
        print(f"running {side} on {count} features + {len(words)} planted words ...", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "bench.run", "--side", side, "--features", str(count),
             "--words", str(len(words)), "--threads", str(args.threads),
             "--device", args.device],
            check=True, stdout=subprocess.PIPE, text=True, cwd=HERE.parent,
        )
        sides[side] = json.loads(done.stdout.strip().splitlines()[-1])
    from bench.flops import matmul_peak_gflops
    from selfexplain.models import native_bfloat16

    torch.set_num_threads(args.threads)
    peak = {dtype: matmul_peak_gflops(576, 1536, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    ours, naive = sides["ours"], sides["naive"]
    ours_peak = ours["matmul_peak_gflops"]
    results = {
        "baseline_features_per_min": naive["features_per_min"],
        "ours_features_per_min": ours["features_per_min"],
        "speedup": ours["features_per_min"] / naive["features_per_min"],
        "baseline_planted_score": naive["planted_score"],
        "ours_planted_score": ours["planted_score"],
        "matmul_peak_gflops": ours_peak,
        "matmul_peak_gflops_by_dtype": peak,
        "achieved_gflops": ours["achieved_gflops"],
        "baseline_achieved_gflops": naive["achieved_gflops"],
        "achieved_fraction_of_peak": ours["achieved_gflops"] / ours_peak,
        "peak_rss_mb": ours["peak_rss_mb"],
        "baseline_peak_rss_mb": naive["peak_rss_mb"],
        "full_default_sae_minutes_estimate": DEFAULT_SAE_FEATURES / ours["features_per_min"],
        # the blocks each forward really ran (bench.flops: until stop 33 the round trip's
        # two-block reads were charged as full forwards, 209 instead of about 100 for today's)
        "gflop_per_feature": ours["gflop"] / ours["features"],
        "baseline_gflop_per_feature": naive["gflop"] / naive["features"],
        "native_bfloat16": native_bfloat16(args.device),
        # the same token work on Gemma-2B's shapes, for a 16k SAE; hours at 30% of an A100's
        # 312 TFLOP/s bf16 peak (an assumption, not a measurement: no GPU here)
        "gemma2b_16k_pflop": ours["gemma2b_gflop_per_feature"] * 16384 / 1e6,
        "gemma2b_16k_a100_hours_at_30pct": ours["gemma2b_gflop_per_feature"] * 16384 * 1e9
        / (0.3 * 312e12) / 3600,
        "threads": args.threads,
        "cpu": cpu_name(),
        "sides": sides,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {args.out}")


def cpu_name() -> str:
    """The CPU's model name and its bf16 flags: figures from two boxes are never one comparison."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    wanted = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join(wanted) or 'no AVX2'}, {os.cpu_count()} cores)"


def print_table(results: dict) -> None:
    naive, ours = results["sides"]["naive"], results["sides"]["ours"]
    rows = [
        ("features", naive["features"], ours["features"]),
        ("features / min", f"{naive['features_per_min']:.2f}", f"{ours['features_per_min']:.2f}"),
        ("seconds / feature", f"{naive['seconds'] / naive['features']:.2f}",
         f"{ours['seconds'] / ours['features']:.2f}"),
        *[(f"  {stage} s", f"{naive['timings'][stage]:.1f}", f"{ours['timings'][stage]:.1f}")
          for stage in ("prefill", "metrics", "generation", "selection")],
        ("model GFLOP", f"{naive['gflop']:.0f}", f"{ours['gflop']:.0f}"),
        ("GFLOP / feature", f"{results['baseline_gflop_per_feature']:.0f}",
         f"{results['gflop_per_feature']:.0f}"),
        ("achieved GFLOP/s", f"{naive['achieved_gflops']:.1f}", f"{ours['achieved_gflops']:.1f}"),
        ("dtype", naive["dtype"].removeprefix("torch."), ours["dtype"].removeprefix("torch.")),
        ("matmul peak GFLOP/s", f"{naive['matmul_peak_gflops']:.1f}", f"{ours['matmul_peak_gflops']:.1f}"),
        ("peak RSS MB", f"{naive['peak_rss_mb']:.0f}", f"{ours['peak_rss_mb']:.0f}"),
        ("planted top-3", f"{naive['planted_hits']}/{naive['planted_n']}",
         f"{ours['planted_hits']}/{ours['planted_n']}"),
    ]
    print(f"\n{results.get('cpu', '')}\n{'':22}{'original recipe':>18}{'selfexplain':>14}")
    for name, a, b in rows:
        print(f"{name:22}{a!s:>18}{b!s:>14}")
    peak = results["matmul_peak_gflops_by_dtype"]
    print(f"\nspeedup {results['speedup']:.1f}x; matmul peak in the ours run "
          f"{results['matmul_peak_gflops']:.0f} GFLOP/s ({ours['dtype']}), ours at "
          f"{100 * results['achieved_fraction_of_peak']:.0f}% of it; at the end: fp32 "
          f"{peak['float32']:.0f}, bf16 {peak['bfloat16']:.0f} GFLOP/s; full default SAE (4096) "
          f"~{results['full_default_sae_minutes_estimate']:.0f} min")
    print(f"Gemma-2B with a 16k SAE, same token work: {results['gemma2b_16k_pflop']:.0f} PFLOP, "
          f"~{results['gemma2b_16k_a100_hours_at_30pct']:.1f} h on one A100 at 30% of peak "
          f"({ours['gemma2b_gflop_per_feature']:.0f} GFLOP per feature)")


if __name__ == "__main__":
    main()
