"""Held-out detection scoring on planted latents whose contexts are known: a right label scores
high, an unrelated one near chance, hard negatives come from the nearest latents."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from selfexplain.scoring import EmbeddingScorer, HeldoutSet, auroc, detection_set, nearest_latents

ANIMALS = ["the cat chased a mouse", "a dog barked at the mailman", "the horse ate some hay",
           "a cow grazed in the field", "the kitten slept on the sofa", "an owl hooted at night"]
WEATHER = ["heavy rain fell all afternoon", "the storm brought strong winds",
           "snow covered the hills", "a sunny and warm morning", "thunder rolled over the town",
           "fog hid the valley until noon"]
MONEY = ["the bank raised interest rates", "shares fell on the stock market",
         "she paid the invoice in cash", "the loan has a fixed rate", "inflation hit prices",
         "investors sold their bonds"]


KEYWORDS = {"animals": {"cat", "dog", "horse", "cow", "kitten", "owl"},
            "weather": {"rain", "storm", "snow", "sunny", "thunder", "fog"}}


def planted() -> tuple[HeldoutSet, torch.Tensor]:
    """Latent 0 fires on animal texts, latent 1 on weather, latent 2 on money; latents 0 and 3
    share a decoder direction and 3 fires on the weather texts too (0's nearest neighbour)."""
    texts = ANIMALS + WEATHER + MONEY
    groups = {0: range(0, 6), 1: range(6, 12), 2: range(12, 18), 3: range(6, 12)}
    fires = [{f for f, rows in groups.items() if i in rows} for i in range(len(texts))]
    tokens = [[(" " if i else "") + w for i, w in enumerate(t.split())] for t in texts]
    topic = {0: "animals", 1: "weather", 2: "money", 3: "weather"}

    def where(f: int, row: int) -> list[int]:  # the latent fires on its topic's keywords
        hits = [i for i, t in enumerate(tokens[row]) if t.strip() in KEYWORDS.get(topic[f], ())]
        return hits or [0]

    held = HeldoutSet(example_ids=list(range(len(texts))), texts=texts,
                      random=[True] * len(texts), fires=fires,
                      samples=[list(groups[f]) for f in range(4)],
                      sample_maxes=[[1.0 + 0.1 * i for i in range(6)] for _ in range(4)],
                      token_texts=tokens,
                      sample_positions=[[where(f, r) for r in groups[f]] for f in range(4)])
    decoder = torch.eye(4, 8)
    decoder[3] = decoder[0] + 0.1 * torch.eye(4, 8)[1]
    return held, decoder


def test_auroc_counts_pairs_and_ties():
    assert auroc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert auroc([1.0], [1.0, 2.0]) == 0.25  # one tie (half), one loss
    assert auroc([], [1.0]) is None


def test_nearest_latents_and_hard_negatives():
    held, decoder = planted()
    neighbours = nearest_latents(decoder, k=2)
    assert neighbours[0, 0].item() == 3 and neighbours[3, 0].item() == 0
    sets = detection_set(held, 0, neighbours[0].tolist(), n_negatives=6)
    assert sets.activating == list(range(6))
    # an equal share from each neighbour, nearest first: latent 3's weather texts, then the next
    assert sets.hard_negatives[:3] == [6, 7, 8]
    assert detection_set(held, 0, [3], n_negatives=6).hard_negatives == list(range(6, 12))
    assert sets.random_negatives == list(range(6, 12))  # the pool, where latent 0 is silent
    assert not set(sets.random_negatives) & set(sets.activating)


@pytest.fixture(scope="module")
def embedder():
    from selfexplain.evaluation.real import Embedder

    return Embedder()


def test_right_label_scores_high_and_an_unrelated_one_near_chance(embedder, tmp_path):
    held, decoder = planted()
    scorer = EmbeddingScorer(held, decoder, embedder, cache=tmp_path / "emb.safetensors")
    scores = scorer.score([0, 1, 2, 0, 1, 2], ["animals", "weather", "money and finance",
                                               "weather", "money and finance", "animals"])
    right = scores["detection_auroc"].to_list()[:3]
    swapped = scores["detection_auroc"].to_list()[3:]  # the control: another latent's label
    assert min(right) >= 0.9
    assert max(swapped) <= 0.5 and sum(swapped) / 3 < 0.3
    assert scores["n_activating"].to_list() == [6] * 6
    # the cache holds the example embeddings: a second scorer reads them instead of embedding
    assert (tmp_path / "emb.safetensors").is_file()
    again = EmbeddingScorer(held, decoder, lambda texts: (_ for _ in ()).throw(
        AssertionError("embedded again")) if len(texts) == len(held.texts) else embedder(texts),
        cache=tmp_path / "emb.safetensors")
    assert again.score([0], ["animals"])["detection_auroc"][0] == pytest.approx(right[0], abs=0.02)
    # no label: no score
    assert scorer.score([0], [None])["detection_auroc"][0] is None


class _KeywordJudge(BaseHTTPRequestHandler):
    """A chat-completions server that votes 1 for an excerpt holding a keyword of the label."""

    requests = 0

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _KeywordJudge.requests += 1
        prompt = body["messages"][-1]["content"]
        label = prompt.split("described as:\n")[1].split("\n")[0]
        words = KEYWORDS.get(label, set())
        lines = [line for line in prompt.splitlines() if re.match(r"^\d+\. ", line)]
        if "marked <<like this>>" in prompt:  # fuzzing: does a marked token name the topic?
            votes = [int(any(m.strip().lower() in words for m in re.findall(r"<<(.*?)>>", line)))
                     for line in lines]
        else:  # detection: does the excerpt mention the topic?
            votes = [int(any(w in line.lower() for w in words)) for line in lines]
        data = json.dumps({"choices": [{"message": {"content": str(votes)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_judge_detection_against_a_fake_endpoint():
    from selfexplain.evaluation.judge import Judge, JudgeEndpoint
    from selfexplain.scoring import JudgeDetectionScorer, decile_sample, parse_votes

    assert parse_votes("[1, 0, 1]", 3) == [1, 0, 1] and parse_votes("1 0", 3) is None
    assert decile_sample(list(range(20)), [float(20 - i) for i in range(20)]) == \
        [19, 17, 15, 13, 11, 9, 7, 5, 3, 1]  # one per tenth, weakest first
    server = HTTPServer(("127.0.0.1", 0), _KeywordJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        held, decoder = planted()
        judge = Judge(JudgeEndpoint(f"http://127.0.0.1:{server.server_address[1]}/v1", "fake"))
        scores = JudgeDetectionScorer(held, decoder, judge).score(
            [0, 1, 0], ["animals", "weather", "weather"])
        first = _KeywordJudge.requests
        again = JudgeDetectionScorer(held, decoder, judge).score([0], ["animals"])
    finally:
        server.shutdown()
        server.server_close()
    assert scores["judge_detection"].to_list()[:2] == [1.0, 1.0]  # right labels: perfect
    # another latent's label: no animal text voted (TPR 0), the 6 weather texts among the 10
    # random negatives voted wrongly (TNR 4/10): below chance
    assert scores["judge_detection"][2] == pytest.approx(0.2)
    assert scores["judge_detection_hard"][0] == 1.0
    assert _KeywordJudge.requests == first and again["judge_detection"][0] == 1.0  # cached



def test_judge_fuzzing_against_a_fake_endpoint():
    from selfexplain.evaluation.judge import Judge, JudgeEndpoint
    from selfexplain.scoring import JudgeFuzzingScorer

    server = HTTPServer(("127.0.0.1", 0), _KeywordJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        held, decoder = planted()
        judge = Judge(JudgeEndpoint(f"http://127.0.0.1:{server.server_address[1]}/v1", "fake"))
        scorer = JudgeFuzzingScorer(held, decoder, judge)
        shown = scorer._show((0, {1}))
        scores = scorer.score([0, 1, 0], ["animals", "weather", "weather"])
    finally:
        server.shutdown()
        server.server_close()
    assert shown == "the <<cat>> chased a mouse"
    right, wrong_label = scores["judge_fuzzing"].to_list()[:2], scores["judge_fuzzing"][2]
    assert right == [1.0, 1.0]  # the marked tokens are the topic's words, the others are not
    assert wrong_label <= 0.5  # another latent's label: no better than chance
