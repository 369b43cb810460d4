"""Text sources for `collect`, each split into training and held-out documents and streamed.

A source is one of: `default` (the embedded sample of the corpus the default SAE was trained on,
with that training run's document split), a folder of `.txt` files (`corpus.split_folder`: the
split `train-sae` uses), a Parquet or JSONL file (optionally `.gz`/`.xz`) with a text column,
or `hf:NAME[:CONFIG]` (a Hugging Face dataset, streamed; needs a reachable hub). Statistics come
from the training documents; held-out documents feed label scoring only, so a score never reads
the text that built a latent's typical input.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from selfexplain.errors import InputError

Split = Literal["train", "heldout"]
EMBEDDED_CORPUS = Path(__file__).parent / "data" / "corpus" / "sample.jsonl.xz"
"""Documents of the default corpus (`scripts/build_embedded_corpus.py`): each row has `source`,
`split` (the default SAE's own train / held-out assignment) and `text`."""
HELDOUT_SPLITS = {"heldout", "held-out", "test", "validation", "valid", "dev", "eval"}
"""Values of a `split` column that mark a held-out document; any other value is training text."""
TABLE_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.xz", ".ndjson")


@dataclass(frozen=True)
class DocumentSource:
    """Where the text comes from and how it splits; `key` names its content and split rule."""

    spec: str
    kind: Literal["embedded", "folder", "table", "hf"]
    key: str
    text_column: str = "text"
    seed: int = 0
    heldout_every: int = 10
    path: Path | None = None
    _folder_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def streams(self, split: Split) -> dict[str, Iterator[str]]:
        """Documents of one split, one iterator per source file (round-robined by the packer)."""
        if self.kind == "folder":
            if "split" not in self._folder_cache:
                from selfexplain.corpus import split_folder

                self._folder_cache["split"] = split_folder(
                    self.path, seed=self.seed, heldout_every=self.heldout_every)
            index = 0 if split == "train" else 1
            return {name: iter(parts[index]) for name, parts in self._folder_cache["split"].items()}
        if self.kind == "hf":
            return {self.spec: _hf_documents(self.spec, self.text_column, split, self.heldout_every)}
        return _table_streams(self.path, self.text_column, split, self.heldout_every)


def open_documents(spec: str, *, seed: int = 0, heldout_every: int = 10,
                   text_column: str = "text") -> DocumentSource:
    """Resolve a `--corpus` value; InputError (one line) when it cannot be read."""
    if heldout_every < 2:
        raise InputError(f"heldout_every {heldout_every} must be at least 2")
    common = dict(text_column=text_column, seed=seed, heldout_every=heldout_every)
    if spec in ("default", "embedded"):
        if not EMBEDDED_CORPUS.is_file():
            raise InputError(f"the embedded corpus is missing from {EMBEDDED_CORPUS}: reinstall "
                             "the package or pass --corpus FOLDER")
        key = _digest(["embedded", _file_digest(EMBEDDED_CORPUS), text_column])
        return DocumentSource(spec, "embedded", key, path=EMBEDDED_CORPUS, **common)
    if spec.startswith("hf:"):
        if not spec[3:].strip():
            raise InputError("--corpus hf: needs a dataset name, e.g. hf:NeelNanda/pile-10k")
        return DocumentSource(spec, "hf", _digest(["hf", spec, text_column, seed, heldout_every]),
                              **common)
    path = Path(spec).expanduser()
    if path.is_dir():
        from selfexplain.corpus import corpus_files

        files = corpus_files(path)
        parts = ["folder"] + [f"{p.relative_to(path)}:{_file_digest(p)}" for p in files]
        return DocumentSource(spec, "folder", _digest(parts + [seed, heldout_every]), path=path,
                              **common)
    if path.is_file():
        if not path.name.endswith(TABLE_SUFFIXES):
            raise InputError(f"corpus file {path} is not Parquet or JSONL ({', '.join(TABLE_SUFFIXES)})"
                             ": give one of those, or a folder of .txt files")
        key = _digest(["table", _file_digest(path), text_column, heldout_every])
        source = DocumentSource(spec, "table", key, path=path, **common)
        _check_table(path, text_column)
        return source
    raise InputError(f"corpus {spec!r} is neither `default`, a folder, a Parquet/JSONL file nor "
                     "hf:NAME")


def _digest(parts: list[object]) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    except OSError as err:
        raise InputError(f"cannot read corpus file {path}: {err.strerror or err}") from None
    return sha.hexdigest()[:16]


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if path.name.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _table_rows(path: Path, columns: list[str]) -> Iterator[dict]:
    """Rows of a Parquet file (record batches: bounded memory) or a JSONL file, lazily."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(path)
            present = [c for c in columns if c in handle.schema_arrow.names]
            for batch in handle.iter_batches(batch_size=1024, columns=present):
                yield from batch.to_pylist()
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot read Parquet corpus {path}: {str(err)[:160]}") from None
        return
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError(f"{path} line {number} is not JSON: a JSONL corpus has one "
                                     "object per line") from None
                if isinstance(row, dict):
                    yield row
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise InputError(f"cannot read corpus file {path}: {err}") from None


def _check_table(path: Path, text_column: str) -> None:
    """Fail in seconds when the file has no such column (read the first row only)."""
    for row in _table_rows(path, [text_column, "split", "source"]):
        if text_column not in row:
            raise InputError(f"corpus {path} has no column {text_column!r} (found: "
                             f"{sorted(row)[:6]}): pass --text-column")
        return
    raise InputError(f"corpus {path} holds no rows")


def _is_heldout(row: dict, index: int, heldout_every: int) -> bool:
    """A `split` column decides when present; else every `heldout_every`-th document."""
    value = row.get("split")
    if isinstance(value, str):
        return value.strip().lower() in HELDOUT_SPLITS
    return index % heldout_every == heldout_every - 1


def _table_streams(path: Path, text_column: str, split: Split, heldout_every: int,
                   ) -> dict[str, Iterator[str]]:
    """One stream per `source` value when the table has that column (the embedded sample), else
    one stream. Sources are read up front only for small tables with a source column."""
    first = next(_table_rows(path, ["source"]), {})
    if "source" not in first:
        return {path.name: _table_split(_table_rows(path, [text_column, "split"]), text_column,
                                        split, heldout_every)}
    grouped: dict[str, list[str]] = {}
    for i, row in enumerate(_table_rows(path, [text_column, "split", "source"])):
        text = row.get(text_column)
        if isinstance(text, str) and text.strip() and _is_heldout(row, i, heldout_every) == (
                split == "heldout"):
            grouped.setdefault(str(row.get("source")), []).append(text.strip())
    return {name: iter(docs) for name, docs in sorted(grouped.items())}


def _table_split(rows: Iterator[dict], text_column: str, split: Split,
                 heldout_every: int) -> Iterator[str]:
    for i, row in enumerate(rows):
        text = row.get(text_column)
        if isinstance(text, str) and text.strip() and _is_heldout(row, i, heldout_every) == (
                split == "heldout"):
            yield text.strip()


def _hf_documents(spec: str, text_column: str, split: Split, heldout_every: int) -> Iterator[str]:
    """A Hugging Face dataset's `train` split, streamed; every `heldout_every`-th row held out."""
    name, _, config = spec[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise InputError("--corpus hf:... needs the `datasets` package: pip install datasets") \
            from None
    try:
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
        for i, row in enumerate(rows):
            if text_column not in row:
                raise InputError(f"dataset {name} has no column {text_column!r} (found: "
                                 f"{sorted(row)[:6]}): pass --text-column")
            text = row[text_column]
            if isinstance(text, str) and text.strip() and (
                    i % heldout_every == heldout_every - 1) == (split == "heldout"):
                yield text.strip()
    except InputError:
        raise
    except Exception as err:  # offline, unknown name, gated: one line for the user
        raise InputError(f"cannot stream dataset {name}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:140] if str(err) else ''} (offline? pass "
                         "a local folder or Parquet/JSONL file)") from None


def token_windows(source: DocumentSource, split: Split, tokenizer, context: int,
                  ) -> Iterator[list[int]]:
    """Windows of `context` tokens, round-robin over the source's streams while each lasts (as
    `corpus.token_chunks` packs them, so a folder gives the windows `train-sae` saw)."""
    from selfexplain.corpus import _windows

    separator = tokenizer.encode("\n\n", add_special_tokens=False)
    live = {name: _windows(docs, tokenizer, context, separator)
            for name, docs in source.streams(split).items()}
    while live:
        for name in list(live):
            window = next(live[name], None)
            if window is None:
                del live[name]
                continue
            yield window
