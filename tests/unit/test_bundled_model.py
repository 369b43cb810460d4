"""A model shipped as PyPI chunk packages (gemma3-270m): found without importing the packages,
assembled into the cache once, checksum-verified; a corrupt or missing chunk is a clear error
and leaves no file behind."""

from __future__ import annotations

import hashlib
import sys

import pytest

from selfexplain.errors import ModelLoadError
from selfexplain.models import BUNDLED, BundledGguf, assemble_bundled


def fake_bundle(tmp_path, monkeypatch, chunks: list[bytes], sha: str | None = None) -> BundledGguf:
    """Chunk packages `fakepartN/data/model.gguf.partNN` on sys.path (never imported)."""
    root = tmp_path / "site"
    for i, data in enumerate(chunks, 1):
        folder = root / f"fakepart{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("raise ImportError('chunk packages are never imported')")
        (folder / "data" / f"model.gguf.part{i - 1:02d}").write_bytes(data)
    monkeypatch.syspath_prepend(str(root))
    sys.modules.pop("fakepart1", None)
    return BundledGguf(name="fake", model_id="x/fake", file="model.gguf",
                       sha256=sha or hashlib.sha256(b"".join(chunks)).hexdigest(),
                       parts=tuple(f"fakepart{i}" for i in range(1, len(chunks) + 1)),
                       install="make fake")


def test_assembled_once_and_verified(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(200)), bytes(300), b"tail"]
    bundle = fake_bundle(tmp_path, monkeypatch, chunks)
    path = assemble_bundled(bundle, tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    assert bundle.sha256[:16] in path.name
    mtime = path.stat().st_mtime_ns
    assert assemble_bundled(bundle, tmp_path / "cache") == path  # cached: not written again
    assert path.stat().st_mtime_ns == mtime
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_corrupt_chunks_fail_and_leave_nothing(tmp_path, monkeypatch):
    bundle = fake_bundle(tmp_path, monkeypatch, [b"abc", b"def"], sha="0" * 64)
    with pytest.raises(ModelLoadError, match="corrupt: reinstall them"):
        assemble_bundled(bundle, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_missing_package_names_the_install_command(tmp_path):
    bundle = BundledGguf(name="fake", model_id="x", file="m.gguf", sha256="0" * 64,
                         parts=("no_such_chunk_package_1",), install="make fake")
    with pytest.raises(ModelLoadError, match="not installed .* run make fake"):
        assemble_bundled(bundle, tmp_path)


def test_gemma3_270m_is_registered():
    bundle = BUNDLED["gemma3-270m"]
    assert bundle.model_id == "google/gemma-3-270m" and len(bundle.parts) == 4
