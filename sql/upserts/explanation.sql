INSERT INTO explanation (release, sae_id, feature, run_id, candidate, prompt, text, scale, sample,
                         composite, score, rank, chosen, extra_json, peak_token)
SELECT release, sae_id, feature, run_id, candidate, prompt, text, scale, sample, composite, score,
       rank, chosen, extra_json, peak_token
FROM incoming
ON CONFLICT (release, sae_id, feature, run_id, candidate) DO UPDATE SET
    prompt = excluded.prompt,
    text = excluded.text,
    scale = excluded.scale,
    sample = excluded.sample,
    composite = excluded.composite,
    score = excluded.score,
    rank = excluded.rank,
    chosen = excluded.chosen,
    extra_json = excluded.extra_json,
    peak_token = excluded.peak_token;
