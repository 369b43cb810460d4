"""A KV cache that stores a batch's shared prompt prefix once (see selfexplain.attention).

Rows of an injection batch differ only from the first placeholder on. This cache holds the
prefix's keys/values as (1, hkv, P, d) and each row's own tokens in a buffer preallocated for
the answer, written in place: no per-row copy of the prefix, no copy of the past at each decode
step; a compaction copies only the rows' own tokens. Read only by
`selfexplain.attention.grouped_attention`.

Compaction copies the kept rows into a fresh, smaller buffer. Moving them to the front of the
same buffer instead (no allocation) grew the process by 300-500 MB per 16 latents (glibc kept
the big buffers' pages and the temporaries between them: 2.3 -> 4.1 GB over 96 latents, measured
here); a fresh buffer plateaus at 2.6 GB.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from selfexplain.attention import hand_off


class SharedPrefixLayer(CacheLayerMixin):
    """One layer's cache: the shared prefix once, (1, hkv, P, d), and every row's own keys and
    values in a buffer (b, hkv, capacity, d) written in place (no copy of the past per step)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, prefix_keys: Tensor, prefix_values: Tensor, capacity: int) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # (1, hkv, P, d)
        self.capacity = capacity
        self.length = 0  # own tokens stored per row

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        batch, heads, _, head_dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty(batch, heads, self.capacity, head_dim)
        self.values = value_states.new_empty(batch, heads, self.capacity, head_dim)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: object,
               **kwargs: object) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.keys.shape[-2]:  # more tokens than planned: grow (a copy, rarely)
            self._resize(self.keys.shape[0], torch.arange(self.keys.shape[0]), 2 * end)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        hand_off(self.prefix_keys, self.prefix_values)
        return self.keys[:, :, :end], self.values[:, :, :end]

    @torch.inference_mode()  # the buffers are inference tensors (made in a prompt pass)
    def _resize(self, rows: int, indices: Tensor, capacity: int) -> None:
        """Keep the rows `indices` in a fresh buffer of `capacity` (copies the stored part only)."""
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty(rows, old.shape[1], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length].index_select(0, indices)
            setattr(self, name, new)
        self.capacity = capacity

    @torch.inference_mode()
    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep rows `indices` (repeated for one row per sample, or the unfinished ones)."""
        if self.is_initialized:
            self._resize(len(indices), indices.to(self.device), self.capacity)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.length

    def get_max_length(self) -> int:
        return -1


class SharedPrefixCache(Cache):
    """A cache whose layers share one prompt prefix across the batch (see the module doc)."""

    def __init__(self, prefix: list[tuple[Tensor, Tensor]], capacity: int) -> None:
        super().__init__(layers=[SharedPrefixLayer(k, v, capacity) for k, v in prefix])

