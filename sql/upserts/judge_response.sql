INSERT INTO judge_response (key, model, messages_json, response, created_at)
SELECT key, model, messages_json, response, created_at
FROM incoming
ON CONFLICT (key) DO UPDATE SET
    model = excluded.model,
    messages_json = excluded.messages_json,
    response = excluded.response,
    created_at = excluded.created_at;
