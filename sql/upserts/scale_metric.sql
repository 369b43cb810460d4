INSERT INTO scale_metric (release, sae_id, feature, run_id, prompt, scale_index, scale, selfsim,
                          entropy, crossent, composite)
SELECT release, sae_id, feature, run_id, prompt, scale_index, scale, selfsim, entropy, crossent,
       composite
FROM incoming
ON CONFLICT (release, sae_id, feature, run_id, prompt, scale_index) DO UPDATE SET
    scale = excluded.scale,
    selfsim = excluded.selfsim,
    entropy = excluded.entropy,
    crossent = excluded.crossent,
    composite = excluded.composite;
