"""Reference labels from a Neuronpedia-like JSONL file (`selfexplain import --reference`), checked
line by line, and their import into the warehouse through the one writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

from selfexplain.errors import InputError


def reference_frame(path: Path, source: str, release: str, sae_id: str):
    """Reference labels from a Neuronpedia-like JSONL file, checked line by line: every problem is
    one InputError naming the line (lines without a description are left out)."""
    from selfexplain.warehouse_rows import frame, utc_now

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {reason}; give a UTF-8 JSONL file") from None
    now = utc_now()
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except ValueError as err:
            raise InputError(f"{where} is not JSON ({str(err)[:80]}): give one JSON object per "
                             "line") from None
        if not isinstance(item, dict):
            raise InputError(f"{where} is a JSON {type(item).__name__}, not an object with index "
                             "and description")
        missing = [c for c in ("index", "description") if c not in item]
        if missing:
            raise InputError(f"{where} lacks field(s) {missing}: each line needs index and "
                             "description")
        index = item["index"]
        if isinstance(index, str) and re.fullmatch(r"\s*[0-9]+\s*", index):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**31:
            raise InputError(f"{where}: index {str(index)[:40]!r} is not a feature number "
                             "(0, 1, 2, ...)")
        if not item["description"]:
            continue
        fields = {name: item.get(key) for name, key in (
            ("description", "description"), ("model_id", "modelId"), ("layer", "layer"),
            ("explanation_model", "explanationModelName"))}
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
                raise InputError(f"{where}: {name} is a JSON {type(value).__name__}, not text; "
                                 "give it as a string")
            fields[name] = None if value is None else str(value)
        rows.append(dict(source=source, release=release, sae_id=sae_id, feature=index,
                         source_file=str(path), imported_at=now, **fields))
    if not rows:
        raise InputError(f"{path} holds no labels: each line needs an index and a description")
    return frame("reference_label", rows)


def import_references(warehouse: str, path: Path, source: str, release: str,
                      sae_id: str) -> int:
    """Check the whole file first (bad input leaves the warehouse untouched), then upsert its
    rows into `reference_label` under the run lock; returns the number of labels."""
    from selfexplain.runlock import write_locked

    rows = reference_frame(Path(path), source, release, sae_id)
    write_locked(warehouse, {"reference_label": rows})
    return rows.height
