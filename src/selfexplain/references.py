"""Reference labels (a Neuronpedia explanation export, or a CSV) and their import into the
warehouse through the one writer.

`read_reference_labels` is the one reader: `selfexplain import --reference` and `selfexplain
evaluate --references` both use it. It takes a JSON list, a JSON object holding the list
(`{"explanations": [...]}`), a single JSON object, JSON Lines, or a CSV (by its `.csv` suffix),
and checks every entry: each problem is one InputError naming the line (JSON Lines, CSV) or the
entry (a JSON list); entries whose description is empty are left out.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path

from selfexplain.errors import InputError

FEATURE_KEYS = ("index", "feature", "latent", "featureIndex")
DESCRIPTION_KEYS = ("description", "explanation", "label")
LIST_KEYS = ("explanations", "features", "data", "items")
"""Keys of a JSON object that hold the list of entries (Neuronpedia's export and look-alikes)."""


def _entries(path: Path, text: str) -> list[tuple[str, object]]:
    """(where, entry) for every entry of the file; `where` names its line (JSON Lines, CSV, a
    single JSON object) or its position in a JSON list (`entry N`)."""
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            return [(f"{path} line {reader.line_num}", row) for row in reader]
        except csv.Error as err:
            raise InputError(f"{path} line {reader.line_num} is not CSV ({str(err)[:80]}): "
                             "give a header (feature,description) and one row per "
                             "feature") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except ValueError:  # JSON Lines (or broken JSON: said line by line below)
            data = None
        if isinstance(data, dict):
            listed = next((data[k] for k in LIST_KEYS if isinstance(data.get(k), list)), None)
            if listed is None:
                return [(f"{path} line 1", data)]
            data = listed
        if isinstance(data, list):
            return [(f"{path} entry {number}", entry) for number, entry in enumerate(data, 1)]
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            out.append((where, json.loads(line)))
        except ValueError as err:
            raise InputError(f"{where} is not JSON ({str(err)[:80]}): give one JSON object per "
                             "line") from None
    return out


def _text(entry: Mapping, where: str, name: str, *keys: str) -> str | None:
    """The first non-empty value of `keys`, as text; a list, object or boolean is refused."""
    for key in keys:
        value = entry.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"{where}: {name} is a JSON {type(value).__name__}, not text; give "
                             "it as a string")
        return str(value)
    return None


def _feature(entry: Mapping, where: str) -> int:
    index = next((entry[k] for k in FEATURE_KEYS if entry.get(k) not in (None, "")), None)
    if isinstance(index, str) and re.fullmatch(r"\s*[0-9]+\s*", index):
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**31:
        raise InputError(f"{where}: index {str(index)[:40]!r} is not a feature number "
                         "(0, 1, 2, ...)")
    return index


def read_reference_labels(path: str | Path, *, source: str = "neuronpedia",
                          release: str | None = None, sae_id: str | None = None):
    """`reference_label` rows from a Neuronpedia export (JSON list / object / JSON Lines) or a CSV
    (`feature`/`index`, `description`/`label`/`explanation`), one row per feature.

    `release` / `sae_id` name the SAE in our warehouse; by default an entry's own `release` /
    `sae_id`, else its `modelId` and `layer` (e.g. `neuronpedia:gemma-2b`, `6-res-jb`). The last
    description of a feature wins; a file without one label is refused."""
    from selfexplain.warehouse_rows import frame, utc_now

    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference label file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {reason}; give a UTF-8 JSON, JSONL or CSV "
                         "file") from None
    now = utc_now()
    rows: dict[tuple[str, str, int], dict] = {}
    for where, entry in _entries(path, text):
        if not isinstance(entry, Mapping):
            raise InputError(f"{where} is a JSON {type(entry).__name__}, not an object with "
                             "index and description")
        missing = [what for what, keys in (("index", FEATURE_KEYS),
                                           ("description", DESCRIPTION_KEYS))
                   if not any(k in entry for k in keys)]
        if missing:
            noun = where.split()[-2]  # "line" or "entry"
            raise InputError(f"{where} lacks field(s) {missing}: each {noun} needs an index "
                             "(index/feature) and a description (description/explanation/label)")
        feature = _feature(entry, where)
        description = (_text(entry, where, "description", *DESCRIPTION_KEYS) or "").strip()
        if not description:
            continue
        model_id = _text(entry, where, "model_id", "modelId", "model_id", "model")
        layer = _text(entry, where, "layer", "layer", "saeId", "sae_id", "source")
        row_release = (release or _text(entry, where, "release", "release")
                       or f"{source}:{model_id or 'unknown'}")
        row_sae = sae_id or _text(entry, where, "sae_id", "sae_id") or layer or "unknown"
        rows[(row_release, row_sae, feature)] = dict(
            source=source, release=row_release, sae_id=row_sae, feature=feature,
            description=description, model_id=model_id, layer=layer,
            explanation_model=_text(entry, where, "explanation_model", "explanationModelName",
                                    "explanation_model", "explainer"),
            source_file=str(path), imported_at=now)
    if not rows:
        raise InputError(f"{path} holds no labels: each line needs an index and a description")
    return frame("reference_label", rows.values())


def import_references(warehouse: str, path: Path, source: str, release: str,
                      sae_id: str) -> int:
    """Check the whole file first (bad input leaves the warehouse untouched), then upsert its
    rows into `reference_label` under the run lock; returns the number of labels."""
    from selfexplain.runlock import write_locked

    rows = read_reference_labels(Path(path), source=source, release=release, sae_id=sae_id)
    write_locked(warehouse, {"reference_label": rows})
    return rows.height
