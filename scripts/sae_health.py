"""SAE health for a card: `python scripts/sae_health.py SAE_FOLDER` prints one JSON object.

Reads the folder's feature_stats.parquet (see `selfexplain.evaluation.health` for each number;
the theme check embeds every live latent's top contexts with MiniLM, about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfexplain.evaluation.health import health
from selfexplain.evaluation.real import Embedder
from selfexplain.feature_stats import load_feature_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae_dir", type=Path)
    parser.add_argument("--no-themes", action="store_true", help="skip the MiniLM theme check")
    args = parser.parse_args()
    stats = load_feature_stats(args.sae_dir)
    numbers = health(stats, None if args.no_themes else Embedder())
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()}))


if __name__ == "__main__":
    main()
