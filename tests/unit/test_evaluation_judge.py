"""Reference label import and the LLM judge against a fake chat-completions server on 127.0.0.1;
its answers cached in the warehouse (a second run asks nothing)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import polars as pl
import pytest

from selfexplain.errors import InputError
from selfexplain.evaluation import judge as judge_mod


class _FakeChat(BaseHTTPRequestHandler):
    """Answers Yes when the reference's first word appears among the candidates, else No."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.seen.append({"path": self.path, "body": body,
                               "auth": self.headers.get("Authorization")})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        if "Which descriptions fit" in prompt:
            answer = "5"
        else:
            reference = prompt.split("description of a feature of a language model:\n")[1]
            first = reference.split()[0].lower()
            candidates = prompt.split("Candidate explanations of the same feature:\n")[1]
            candidates = candidates.split("\n\nDoes any")[0].lower()
            answer = "Yes." if first in candidates else "No"
        payload = {"id": "x", "object": "chat.completion",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop"}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server():
    _FakeChat.seen = []
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_from_env() -> None:
    assert judge_mod.JudgeEndpoint.from_env({}) is None
    endpoint = judge_mod.JudgeEndpoint.from_env({
        judge_mod.ENV_URL: "http://h/v1/", judge_mod.ENV_MODEL: "m", judge_mod.ENV_KEY: "k"})
    assert endpoint == judge_mod.JudgeEndpoint("http://h/v1", "m", "k")
    with pytest.raises(InputError, match="SELFEXPLAIN_JUDGE_MODEL"):
        judge_mod.JudgeEndpoint.from_env({judge_mod.ENV_URL: "http://h/v1"})
    assert judge_mod.judge_rows(None, pl.DataFrame()) is None  # no endpoint: nothing asked


def test_judge_against_fake_server(fake_server, tmp_path) -> None:
    endpoint = judge_mod.JudgeEndpoint(fake_server, "judge-model", key="secret")
    cache = judge_mod.JudgeCache(tmp_path / "cache.jsonl")
    judge = judge_mod.Judge(endpoint, cache)
    verdict, answer = judge.matches("dogs and other pets", ["a loyal dogs friend", "x", "y"])
    assert verdict is True and answer == "Yes."
    assert judge.matches("cats", ["about dogs"])[0] is False
    request = _FakeChat.seen[0]
    assert request["body"]["temperature"] == 0 and request["body"]["model"] == "judge-model"
    assert request["auth"] == "Bearer secret"
    assert "1. a loyal dogs friend\n2. x\n3. y" in request["body"]["messages"][-1]["content"]
    # cached: asking again sends nothing, also from a fresh judge reading the cache file
    judge.matches("dogs and other pets", ["a loyal dogs friend", "x", "y"])
    assert judge.requests == 2 and len(_FakeChat.seen) == 2
    again = judge_mod.Judge(endpoint, judge_mod.JudgeCache(tmp_path / "cache.jsonl"))
    assert again.matches("cats", ["about dogs"])[0] is False and again.requests == 0
    outcome, _ = judge.side_by_side(["the «dog» barked"], "dogs", "animals")
    assert outcome == "both_a_better"
    items = pl.DataFrame({"method": ["default", "vocabproj"], "feature": [1, 1],
                          "reference": ["dogs", "dogs"], "labels": [["dogs"], ["cat"]]})
    rows = judge_mod.judge_rows(judge, items)
    assert rows["judge_match"].to_list() == [True, False]


def test_second_run_with_the_same_warehouse_asks_nothing(fake_server, tmp_path) -> None:
    """Run 1 reads the (empty) warehouse, asks the server, and hands its new answers to the
    writer; run 2 starts from the stored rows and sends zero requests."""
    from selfexplain.evaluation.judging import judge_cache
    from selfexplain.warehouse import Warehouse

    endpoint = judge_mod.JudgeEndpoint(fake_server, "judge-model")
    path = str(tmp_path / "w.duckdb")
    items = pl.DataFrame({"method": ["default", "vocabproj", "default"], "feature": [1, 1, 2],
                          "reference": ["dogs", "dogs", "cats"],
                          "labels": [["dogs"], ["cat"], ["felines", "cats"]]})

    def run(out_dir):
        cache = judge_cache(path, out_dir)  # read-only read of the warehouse, if it exists
        judge = judge_mod.Judge(endpoint, cache)
        rows = judge_mod.judge_rows(judge, items)
        new = cache.new_rows()
        with Warehouse(path) as writer:  # the single writer, at the end of the run
            writer.write({"judge_response": new})
        return rows, judge.requests, new

    first, asked, new = run(None)
    assert asked == 3 and len(_FakeChat.seen) == 3 and new.height == 3
    assert first["judge_match"].to_list() == [True, False, True]
    with Warehouse(path, read_only=True) as reader:
        stored = reader.table("judge_response").sort("key")
    assert stored.height == 3 and set(stored["model"]) == {"judge-model"}
    for row in stored.iter_rows(named=True):  # the key is the hash of what was asked
        messages = json.loads(row["messages_json"])
        assert judge_mod.JudgeCache.key(row["model"], messages) == row["key"]
        assert row["response"] in ("Yes.", "No")

    again, asked, new = run(None)
    assert asked == 0 and len(_FakeChat.seen) == 3 and new.height == 0
    assert again.equals(first)

    # the JSONL file still works, alone or beside the warehouse; its answers reach the warehouse
    fresh = judge_mod.Judge(endpoint, judge_mod.JudgeCache(tmp_path / "out" / "judge_cache.jsonl"))
    fresh.matches("birds", ["sparrows"])
    assert len(_FakeChat.seen) == 4
    third, asked, new = run(str(tmp_path / "out"))
    assert asked == 0 and third.equals(first)
    assert new["response"].to_list() == ["No"]  # the birds answer, from the file
    with Warehouse(path, read_only=True) as reader:
        assert reader.table("judge_response").height == 4


def test_judge_output_notes_judges_and_hands_back_new_answers(fake_server, tmp_path) -> None:
    """The evaluation's judge step (what the evaluate flow's judge task runs): without an endpoint
    only notes; with one, a `judge` suite and the judge's new answers for the writer."""
    from selfexplain.evaluation.judging import judge_output
    from selfexplain.evaluation.suite import EvalOutput, EvalRequest
    from selfexplain.references import read_reference_labels
    from selfexplain.warehouse import Warehouse

    path = tmp_path / "refs.csv"
    path.write_text("feature,description\n1,dogs\n2,cats\n9,unused\n")
    references = read_reference_labels(path, release="r", sae_id="s")
    real = pl.DataFrame({"method": ["default", "vocabproj", "default"], "feature": [1, 1, 2],
                         "labels": [["dogs"], ["cat"], ["felines", "cats"]]})

    def output():
        return EvalOutput(EvalRequest(suite="real"), items={"real": real})

    skipped, said = output(), []
    assert judge_output(skipped, None, references=references, references_path=str(path),
                        detection=True, log=said.append) is None
    assert skipped.notes == [f"imported 3 reference labels from {path}",
                             judge_mod.SKIP_MESSAGE, judge_mod.SKIP_MESSAGE]
    assert said == [judge_mod.SKIP_MESSAGE] * 2 and skipped.summaries == []
    assert set(skipped.items) == {"real"} and not _FakeChat.seen  # nothing asked

    endpoint = judge_mod.JudgeEndpoint(fake_server, "judge-model")
    warehouse = str(tmp_path / "w.duckdb")
    judged = output()
    new = judge_output(judged, endpoint, references=references, references_path=str(path),
                       warehouse=warehouse)
    assert judged.items["judge"]["judge_match"].to_list() == [True, False, True]
    summary = judged.summary.filter(pl.col("suite") == "judge").sort("method")
    assert summary.select("method", "metric", "value", "n").rows() == [
        ("default", "judge_match", 1.0, 2), ("vocabproj", "judge_match", 0.0, 1)]
    assert new.height == 3 and len(_FakeChat.seen) == 3
    with Warehouse(warehouse) as writer:  # what the flow hands to write_rows
        writer.write({"judge_response": new})
    again = output()
    assert judge_output(again, endpoint, references=references, references_path=str(path),
                        warehouse=warehouse).height == 0  # every answer came from the warehouse
    assert len(_FakeChat.seen) == 3 and again.items["judge"].equals(judged.items["judge"])
    planted = EvalOutput(EvalRequest(), items={"planted": real})  # no real suite: no question
    assert judge_output(planted, endpoint, references=references,
                        references_path=str(path)).height == 0
    assert "judge" not in planted.items and len(_FakeChat.seen) == 3


def test_judge_verdicts_are_eval_result_rows() -> None:
    from selfexplain.evaluation.suite import EvalOutput, EvalRequest, eval_result_rows

    verdicts = pl.DataFrame({"method": ["default", "vocabproj"], "feature": [1, 1],
                             "judge_match": [True, None], "response": ["Yes", "Maybe"]})
    output = EvalOutput(EvalRequest(suite="real"), items={"judge": verdicts})
    rows = eval_result_rows(output, eval_id="e", model_id="m", sae_release="r", sae_id="s")
    assert rows.select("suite", "release", "sae_id", "method", "metric", "value").rows() == [
        ("judge", "r", "s", "default", "judge_match", 1.0)]  # an unparsed answer is not a row
    assert json.loads(rows["detail_json"][0]) == {"response": "Yes"}


def test_judge_errors_are_clear(fake_server) -> None:
    bad = judge_mod.Judge(judge_mod.JudgeEndpoint(fake_server.replace("/v1", "/nope"), "m"))
    with pytest.raises(judge_mod.JudgeError, match="HTTP 404"):
        bad.matches("a", ["b"])
    unreachable = judge_mod.Judge(judge_mod.JudgeEndpoint("http://127.0.0.1:9/v1", "m",
                                                          timeout_s=2))
    with pytest.raises(judge_mod.JudgeError, match="cannot reach"):
        unreachable.matches("a", ["b"])


@pytest.mark.parametrize("answer,expected", [("Yes", True), (" no.", False), ("YES, it does", True),
                                             ("Maybe", None), ("", None), ("Nope", None)])
def test_parse_yes_no(answer: str, expected: bool | None) -> None:
    assert judge_mod.parse_yes_no(answer) is expected


def test_read_reference_labels(tmp_path) -> None:
    from selfexplain.references import read_reference_labels

    export = [
        {"modelId": "gemma-2b", "layer": "6-res-jb", "index": "12", "description": " dogs ",
         "explanationModelName": "gpt-3.5-turbo", "typeName": "oai_token-act-pair"},
        {"modelId": "gemma-2b", "layer": "6-res-jb", "index": 40, "description": "the word of"},
    ]
    as_json = tmp_path / "np.json"
    as_json.write_text(json.dumps(export))
    rows = read_reference_labels(as_json)
    assert rows["feature"].to_list() == [12, 40]
    assert rows["description"][0] == "dogs" and rows["explanation_model"][0] == "gpt-3.5-turbo"
    assert rows["release"][0] == "neuronpedia:gemma-2b" and rows["sae_id"][0] == "6-res-jb"
    as_jsonl = tmp_path / "np.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(e) for e in export))
    named = read_reference_labels(as_jsonl, release="gemma-2b-res-jb",
                                  sae_id="blocks.6.hook_resid_post")
    assert set(named["release"]) == {"gemma-2b-res-jb"}
    assert named.drop("release", "sae_id", "source_file", "imported_at").equals(
        rows.drop("release", "sae_id", "source_file", "imported_at"))  # the same labels
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"explanations": export}))
    assert read_reference_labels(wrapped).height == 2
    single = tmp_path / "one.json"
    single.write_text(json.dumps(export[1], indent=2))  # one object, pretty-printed
    assert read_reference_labels(single)["feature"].to_list() == [40]
    as_csv = tmp_path / "refs.csv"
    as_csv.write_text("feature,label\n3,numbers\n3,digits\n5,colours\n7,\n")
    csv_rows = read_reference_labels(as_csv, source="manual", release="r", sae_id="s")
    # the last description of a feature wins; an empty one is left out
    assert csv_rows.sort("feature")["description"].to_list() == ["digits", "colours"]
    assert set(csv_rows["source"]) == {"manual"}
    assert dict(csv_rows.schema)["feature"] == pl.Int32  # the warehouse's reference_label row
    with pytest.raises(InputError, match="not found"):
        read_reference_labels(tmp_path / "missing.json")


@pytest.mark.parametrize("name, text, problem", [
    ("csv without a description column", "feature,text\n3,x\n",
     r"refs\.csv line 2 lacks field\(s\) \['description'\]: each line needs"),
    ("csv index a word", "feature,description\n3,x\nthree,y\n",
     r"refs\.csv line 3: index 'three' is not a feature number"),
    ("json list entry not an object", '[{"index": 1, "description": "x"}, 7]',
     r"refs\.json entry 2 is a JSON int, not an object"),
    ("json list entry without index", '[{"index": 1, "description": "x"}, {"label": "y"}]',
     r"refs\.json entry 2 lacks field\(s\) \['index'\]: each entry needs"),
    ("jsonl line not JSON", '{"index": 1, "description": "x"}\n{oops}\n',
     r"refs\.jsonl line 2 is not JSON .*one JSON object per line"),
    ("jsonl model an object", '{"index": 1, "description": "x", "modelId": {"a": 1}}',
     r"refs\.jsonl line 1: model_id is a JSON dict, not text"),
    ("only empty descriptions", '[{"index": 1, "description": ""}]', r"holds no labels"),
])
def test_reference_labels_refused_in_one_line(tmp_path, name, text, problem) -> None:
    """Every format says which line (or list entry) is wrong, in one line."""
    from selfexplain.references import read_reference_labels

    suffix = ".csv" if name.startswith("csv") else ".jsonl" if "jsonl" in name else ".json"
    path = tmp_path / f"refs{suffix}"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        read_reference_labels(path)
    assert "\n" not in str(info.value)


def test_reference_rows_upsert_into_the_warehouse(tmp_path) -> None:
    from selfexplain.references import read_reference_labels
    from selfexplain.warehouse import Warehouse

    path = tmp_path / "refs.csv"
    path.write_text("feature,description\n1,dogs\n2,cats\n")
    rows = read_reference_labels(path, release="r", sae_id="s")
    with Warehouse(":memory:") as warehouse:
        assert warehouse.upsert("reference_label", rows) == 2
        assert warehouse.upsert("reference_label", rows) == 2
        assert warehouse.table("reference_label").height == 2
