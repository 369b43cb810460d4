"""The original recipe, ported as directly as possible, as the benchmark's baseline.

Per feature and per prompt (meaning, repeat): one 64-row forward over the whole prompt (no prefix
reuse, full-vocabulary logits at every position, injection by a forward hook on block 1's output),
then 32 sampled generations with `model.generate` (temperature 1, no top-k/top-p, KV cache on,
40 new tokens), then the composite's top 3. Metric formulas are the core's pure functions, so the
two sides differ only in how the work is done.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from selfexplain.config import ExplainConfig
from selfexplain.inject import captured_at
from selfexplain.metrics import composite, entropy, nearest_scale_index, self_similarity
from selfexplain.models import LoadedModel
from selfexplain.prompts import MEANING, REPEAT, build_prompt


@contextmanager
def _replace_output(layer: torch.nn.Module, positions: torch.Tensor, vectors: torch.Tensor):
    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] == 1:
            return output
        hidden = hidden.clone()
        hidden[:, positions] = vectors[:, None, :].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def naive_explain(lm: LoadedModel, direction: torch.Tensor, config: ExplainConfig,
                  timings: dict[str, float]) -> dict[str, object]:
    """One feature, the original way. direction: (d_model,) unit. Returns top-3 and token."""
    import time

    injection, probe_layer = config.injection_layer, config.probe_layer or lm.default_probe_layer()
    metric_scales = torch.tensor(config.metric_scales)  # (64,)
    gen_scales = torch.tensor(config.generation_scales)  # (32,)
    layer = lm.layers[injection - 1]
    out: dict[str, object] = {}
    for kind in (MEANING, REPEAT):
        prompt = build_prompt(lm.tokenizer, lm.family, kind, config.placeholder)
        ids = prompt.input_ids[None].to(lm.device)  # (1, seq)
        clock = time.perf_counter()
        vectors = (metric_scales[:, None] * direction[None, :]).to(lm.device)  # (64, d_model)
        with _replace_output(layer, prompt.placeholder_positions, vectors), captured_at(
            lm.layers[probe_layer]
        ) as probe:
            logits = lm.model(input_ids=ids.expand(len(metric_scales), -1), use_cache=False).logits
        last = logits[:, -1].float().cpu()  # (64, vocab)
        probed = probe.last.float().cpu()
        selfsim = self_similarity(probed[None], probed[0],
                                  direction[None])  # (1, 64); row 0 is scale 0
        ent = entropy(last) - entropy(last[0])
        comp = composite(selfsim, ent[None], metric_scales, config.alpha, config.min_scale)[0]
        timings["metrics"] += time.perf_counter() - clock
        clock = time.perf_counter()
        vectors = (gen_scales[:, None] * direction[None, :]).to(lm.device)  # (32, d_model)
        with _replace_output(layer, prompt.placeholder_positions, vectors):
            generated = lm.model.generate(
                input_ids=ids.expand(len(gen_scales), -1), attention_mask=torch.ones_like(
                    ids.expand(len(gen_scales), -1)),
                do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=config.max_new_tokens, use_cache=True,
                pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
            )
        texts = [
            lm.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).split('"')[0].strip()
            for row in generated
        ]
        timings["generation"] += time.perf_counter() - clock
        clock = time.perf_counter()
        at = comp[nearest_scale_index(metric_scales, gen_scales)]  # (32,)
        order = sorted(range(len(texts)), key=lambda i: -float(at[i]))
        top = [texts[i] for i in order if texts[i]][:3]
        out[kind] = {"top": top, "all": texts, "max_selfsim": float(selfsim.max())}
        timings["selection"] += time.perf_counter() - clock
    return {
        "explanations": out[MEANING]["top"],
        "samples": out[MEANING]["all"],
        "recovered_token": (out[REPEAT]["top"] or [None])[0],
        "max_selfsim": out[MEANING]["max_selfsim"],
    }
