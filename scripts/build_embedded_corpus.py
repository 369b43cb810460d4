"""Write the embedded corpus sample: `python scripts/build_embedded_corpus.py corpus`.

From the full corpus folder (`python scripts/build_corpus.py corpus`), take documents of each
source in the order the default SAE's training run streamed them (`corpus.split_folder` with its
seed 0) until each source holds a share of the token budget, keeping every document's train /
held-out assignment. Held-out rows are documents the default SAE never trained on. Writes
`src/selfexplain/data/corpus/sample.jsonl.xz` (rows: source, split, text) and its SOURCES.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

from selfexplain.corpus import split_folder
from selfexplain.documents import EMBEDDED_CORPUS
from selfexplain.models import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--train-tokens", type=int, default=1_150_000)
    parser.add_argument("--heldout-tokens", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0, help="the default SAE's training seed")
    parser.add_argument("--out", type=Path, default=EMBEDDED_CORPUS)
    args = parser.parse_args(argv)
    tokenizer = load_model("default").tokenizer
    split = split_folder(args.corpus, seed=args.seed)
    rows: list[dict[str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for name, (kept, held) in split.items():
        source = Path(name).stem
        counts[source] = {}
        for part, docs, budget in (("train", kept, args.train_tokens),
                                   ("heldout", held, args.heldout_tokens)):
            share, total, n = budget // len(split), 0, 0
            for doc in docs:
                if total >= share:
                    break
                total += len(tokenizer.encode(doc, add_special_tokens=False))
                rows.append({"source": source, "split": part, "text": doc})
                n += 1
            counts[source][part] = n
            counts[source][f"{part}_tokens"] = total
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(args.out, "wt", encoding="utf-8", preset=9) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = json.loads((args.corpus / "SOURCES.json").read_text())
    (args.out.parent / "SOURCES.json").write_text(json.dumps(
        {"built_by": "scripts/build_embedded_corpus.py", "seed": args.seed, "documents": counts,
         "sources": manifest.get("sources", {})}, indent=2) + "\n")
    print(json.dumps(counts, indent=1))
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
