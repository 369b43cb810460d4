INSERT INTO scale_metric (release, sae_id, feature, run_id, prompt, scale, selfsim,
                          entropy, crossent, composite)
SELECT release, sae_id, feature, run_id, prompt, scale, selfsim, entropy, crossent,
       composite
FROM incoming
ON CONFLICT (release, sae_id, feature, run_id, prompt, scale) DO UPDATE SET
    selfsim = excluded.selfsim,
    entropy = excluded.entropy,
    crossent = excluded.crossent,
    composite = excluded.composite;
