"""The authors' LLM-judge protocol, against any OpenAI-compatible endpoint.

- Reference labels to judge against are read by `selfexplain.references.read_reference_labels`
  (the one reader; `selfexplain import --reference` uses it too).
- `Judge`: asks, at temperature 0, whether any of the top-3 explanations matches the reference
  (the authors' question), and a 6-way side-by-side of two labels given the feature's contexts.
  Responses are cached by a hash of (model, messages), so a rerun costs nothing: the cache starts
  from the warehouse's `judge_response` rows and hands its new answers back to the single writer.
- No endpoint configured: nothing is asked and nothing is invented; callers get `None` and
  `SKIP_MESSAGE`.

Plain urllib, no client library. The core never reads the environment: `JudgeEndpoint.from_env`
takes the mapping (the evaluate tasks pass `os.environ`). `judging` runs these steps on an
evaluation's output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from selfexplain.errors import InputError

ENV_URL, ENV_MODEL, ENV_KEY = "SELFEXPLAIN_JUDGE_URL", "SELFEXPLAIN_JUDGE_MODEL", "SELFEXPLAIN_JUDGE_KEY"
SKIP_MESSAGE = (
    f"LLM judge skipped: no endpoint configured (set {ENV_URL}, e.g. http://127.0.0.1:8000/v1, "
    f"and {ENV_MODEL}; {ENV_KEY} if it needs a key)"
)

JUDGE_RESPONSE_SCHEMA = {
    "key": pl.String, "model": pl.String, "messages_json": pl.String, "response": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
}
"""The warehouse's `judge_response` row: one cached answer of the judge."""

MATCH_SYSTEM = "You are a careful judge of descriptions of neural network features."
MATCH_PROMPT = (
    "A reference description of a feature of a language model:\n{reference}\n\n"
    "Candidate explanations of the same feature:\n{candidates}\n\n"
    "Does any of the candidate explanations match the reference description, i.e. describe the "
    "same concept? Answer with one word: Yes or No."
)
SIDE_BY_SIDE_PROMPT = (
    "Text where a feature of a language model is most active (the active token is marked "
    "«like this»):\n{contexts}\n\nDescription A: {a}\nDescription B: {b}\n\n"
    "Which descriptions fit the feature? Answer with one number only:\n"
    "1 = only A fits\n2 = only B fits\n3 = both fit equally\n4 = neither fits\n"
    "5 = both fit, A better\n6 = both fit, B better"
)
SIDE_BY_SIDE = {1: "a_only", 2: "b_only", 3: "both", 4: "neither", 5: "both_a_better",
                6: "both_b_better"}


# -- the judge ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible chat-completions endpoint."""

    url: str
    """Base URL ending before `/chat/completions`, e.g. http://127.0.0.1:8000/v1."""
    model: str
    key: str | None = None
    timeout_s: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "JudgeEndpoint | None":
        """The endpoint named by SELFEXPLAIN_JUDGE_URL / _MODEL / _KEY, or None if unset."""
        url = (environ.get(ENV_URL) or "").strip()
        if not url:
            return None
        model = (environ.get(ENV_MODEL) or "").strip()
        if not model:
            raise InputError(f"{ENV_URL} is set but {ENV_MODEL} is not: name the judge model")
        return cls(url.rstrip("/"), model, (environ.get(ENV_KEY) or "").strip() or None)


class JudgeCache:
    """Responses keyed by sha256(model, messages), in memory; seeded from the warehouse's
    `judge_response` rows (`rows`, read by the caller) and from an optional JSONL file (`path`,
    appended to as answers arrive).

    The cache never writes the warehouse: `new_rows()` hands back the answers it does not hold yet,
    for the single writer to upsert at the end of the run.
    """

    def __init__(self, path: str | Path | None = None, rows: pl.DataFrame | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.entries: dict[str, str] = {}
        self.records: dict[str, dict[str, object]] = {}
        """Full `judge_response` rows of the answers known with their question, by key."""
        self.stored: set[str] = set()
        """Keys the warehouse already holds (from `rows`)."""
        for row in ([] if rows is None else rows.iter_rows(named=True)):
            self.entries[row["key"]] = row["response"]
            self.stored.add(row["key"])
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    key = record["key"]
                    self.entries.setdefault(key, record["response"])
                    if "model" in record and "messages" in record:  # older files lack them
                        self.records.setdefault(key, _record(
                            key, record["model"], record["messages"], record["response"],
                            record.get("created_at")))

    @staticmethod
    def key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
        return hashlib.sha256(json.dumps([model, list(messages)], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, response: str, *, model: str | None = None,
            messages: Sequence[Mapping[str, str]] | None = None) -> None:
        """Remember an answer; with its `model` and `messages` it can also go to the warehouse."""
        self.entries[key] = response
        line: dict[str, object] = {"key": key, "response": response}
        if model is not None and messages is not None:
            record = _record(key, model, messages, response)
            self.records[key] = record
            line.update(model=model, messages=list(messages),
                        created_at=record["created_at"].isoformat())
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def new_rows(self) -> pl.DataFrame:
        """`judge_response` rows for the answers the warehouse does not hold yet."""
        rows = [r for key, r in self.records.items() if key not in self.stored]
        return pl.DataFrame(rows, schema=JUDGE_RESPONSE_SCHEMA, orient="row")


def _record(key: str, model: str, messages: Sequence[Mapping[str, str]], response: str,
            created_at: str | dt.datetime | None = None) -> dict[str, object]:
    if isinstance(created_at, str):
        created_at = dt.datetime.fromisoformat(created_at)
    return dict(key=key, model=model, messages_json=json.dumps(list(messages), sort_keys=True),
                response=response, created_at=created_at or dt.datetime.now(dt.timezone.utc))


class JudgeError(InputError):
    """The endpoint answered with an error or something that is not a chat completion."""


class Judge:
    """Asks the endpoint at temperature 0; every response cached."""

    def __init__(self, endpoint: JudgeEndpoint, cache: JudgeCache | None = None) -> None:
        self.endpoint = endpoint
        self.cache = cache or JudgeCache()
        self.requests = 0

    def complete(self, messages: list[dict[str, str]], max_tokens: int = 8) -> str:
        key = JudgeCache.key(self.endpoint.model, messages)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        body = json.dumps({"model": self.endpoint.model, "messages": messages,
                           "temperature": 0, "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.endpoint.key:
            headers["Authorization"] = f"Bearer {self.endpoint.key}"
        request = urllib.request.Request(f"{self.endpoint.url}/chat/completions", data=body,
                                         headers=headers, method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.endpoint.timeout_s) as response:
                payload = json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            raise JudgeError(f"judge endpoint answered HTTP {err.code}: {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise JudgeError(f"cannot reach judge endpoint {self.endpoint.url}: {err}") from None
        except json.JSONDecodeError:
            raise JudgeError("judge endpoint did not answer JSON") from None
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError("judge endpoint's answer has no choices[0].message.content") from None
        self.cache.put(key, text, model=self.endpoint.model, messages=messages)
        return text

    def matches(self, reference: str, candidates: Sequence[str]) -> tuple[bool | None, str]:
        """The authors' question: does any of the top-3 candidates match the reference?"""
        listed = "\n".join(f"{i}. {c}" for i, c in enumerate(candidates[:3], 1)) or "(none)"
        messages = [{"role": "system", "content": MATCH_SYSTEM},
                     {"role": "user", "content": MATCH_PROMPT.format(reference=reference,
                                                                      candidates=listed)}]
        answer = self.complete(messages)
        return parse_yes_no(answer), answer

    def side_by_side(self, contexts: Sequence[str], label_a: str, label_b: str
                     ) -> tuple[str | None, str]:
        """6-way comparison of two labels given the feature's top contexts."""
        shown = "\n".join(f"- {c}" for c in contexts[:10]) or "(no contexts)"
        messages = [{"role": "system", "content": MATCH_SYSTEM},
                     {"role": "user", "content": SIDE_BY_SIDE_PROMPT.format(
                         contexts=shown, a=label_a, b=label_b)}]
        answer = self.complete(messages)
        match = re.search(r"[1-6]", answer)
        return (SIDE_BY_SIDE[int(match.group())] if match else None), answer


def parse_yes_no(answer: str) -> bool | None:
    """`Yes` / `No` at the start of the answer (case, punctuation ignored); else None."""
    match = re.match(r"\W*(yes|no)\b", answer.strip().lower())
    return None if match is None else match.group(1) == "yes"


def judge_rows(judge: Judge | None, items: pl.DataFrame) -> pl.DataFrame | None:
    """Judge each item (`method`, `feature`, `reference`, `labels`); None when no judge.

    Returns rows (method, feature, judge_match, response); an unparseable answer gives a null
    match (counted as missing, never as a guess).
    """
    if judge is None:
        return None
    out = []
    for row in items.iter_rows(named=True):
        verdict, answer = judge.matches(row["reference"], row["labels"] or [])
        out.append(dict(method=row["method"], feature=row["feature"], judge_match=verdict,
                        response=answer))
    return pl.DataFrame(out, schema={"method": pl.String, "feature": pl.Int64,
                                     "judge_match": pl.Boolean, "response": pl.String},
                        orient="row")
