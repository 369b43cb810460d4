"""bench.flops.FlopCounter counts the blocks a forward really runs (the bench's GFLOP per latent)."""

import torch

from bench.flops import FlopCounter
from selfexplain.forward import residual_entering


def test_full_forward_stopped_forward_and_decode_step(tiny_lm_any):
    lm = tiny_lm_any
    config = lm.model.config
    n_layers, d_model, vocab = lm.n_layers, config.hidden_size, config.vocab_size
    block_params = [sum(p.numel() for p in block.parameters()) for block in lm.layers]
    ids = torch.randint(3, 50, (2, 5))
    with torch.no_grad(), FlopCounter(lm.model) as counter:
        out = lm.model(input_ids=ids, use_cache=True)
    # 2 rows x 5 tokens through every block; contexts 1..5 (mean 3); 10 logit rows
    assert counter.block_tokens == 10 * n_layers and counter.tokens == 10
    assert counter.logit_rows == 10
    expected = 2 * sum(block_params) * 10 + 4 * d_model * 10 * 3.0 * n_layers + 2 * vocab * d_model * 10
    assert abs(counter.flops - expected) < 1e-6 * expected

    with torch.no_grad(), FlopCounter(lm.model) as counter:  # one decode step with 5 cached
        lm.model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True,
                 logits_to_keep=1)
    assert counter.tokens == 2 and counter.context_tokens == 2 * 6.0
    assert counter.logit_rows == 2

    with FlopCounter(lm.model) as counter:  # the round trip's read: the first 2 blocks only
        residual_entering(lm, 2, ids)
    assert counter.block_tokens == 10 * 2 and counter.logit_rows == 0
    assert abs(counter.flops - (2 * sum(block_params[:2]) * 10 + 4 * d_model * 10 * 3.0 * 2)) < 1
