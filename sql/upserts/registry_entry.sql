INSERT INTO registry_entry (snapshot_sha, release, sae_id, model_id, repo_id, path, neuronpedia_id)
SELECT snapshot_sha, release, sae_id, model_id, repo_id, path, neuronpedia_id
FROM incoming
ON CONFLICT (snapshot_sha, release, sae_id) DO UPDATE SET
    model_id = excluded.model_id,
    repo_id = excluded.repo_id,
    path = excluded.path,
    neuronpedia_id = excluded.neuronpedia_id;
