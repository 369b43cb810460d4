-- One row per question put to the LLM judge: its answer, cached so that a rerun asks nothing.
-- `key` is sha256 of the JSON [model, messages] (evaluation/judge.py `JudgeCache.key`).
CREATE TABLE IF NOT EXISTS judge_response (
    key            VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,       -- the judge model named by the endpoint
    messages_json  VARCHAR NOT NULL,       -- the chat messages asked (JSON, keys sorted)
    response       VARCHAR NOT NULL,       -- the answer's text, as received (temperature 0)
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key)
);
