"""A KV cache that stores a batch's shared prompt prefix once (see selfexplain.attention).

Rows of an injection batch differ only from the first placeholder on. This cache holds the
prefix's keys/values as (1, hkv, P, d), each row's prompt tokens after it as one contiguous block
(b, hkv, S, d), and each row's answer in a buffer written in place (room for `FIRST_ROOM`
tokens, doubled when an answer needs more; sized for the whole budget up front, the first
decode step of 1,792 rows spent 2.9 s faulting in a fresh 1 GB buffer, now 0.9 s): no
per-row copy of the prefix, no copy of the past at each decode step; a fan-out or compaction is
one `index_select` of the prompt block plus a copy of the answer tokens so far. Read only by
`selfexplain.attention.grouped_attention`, which attends to the three blocks in turn.

The prompt block is its own tensor, not the front of the answer buffer, for two measured
reasons (2-core Xeon, bfloat16, 448 rows): a slice of a bigger buffer is not contiguous, and
CPU bmm copied it at every decode step (0.96 vs 0.34 ms a layer); and a fan-out into the big
buffer went through a temporary (two copies of 448-1792 rows' prompt tokens, ~0.7 s per 64
latents at 128 rows a batch, ~2.3 s at 512).

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


FIRST_ROOM = 4
"""Answer tokens the buffer first holds per row (most answers end within 2-4 tokens; it doubles
when a longer one needs it, by then on a compacted batch)."""


class SharedPrefixLayer(CacheLayerMixin):
    """One layer's cache in three blocks: the shared prefix once, (1, hkv, P, d); each row's
    prompt tokens after it (`keys`/`values`, (b, hkv, S, d), contiguous, written by the prompt
    pass); each row's answer tokens, in a buffer (b, hkv, capacity, d) written in place."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, prefix_keys: Tensor, prefix_values: Tensor, capacity: int) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values  # (1, hkv, P, d)
        self.capacity = capacity  # answer tokens asked for (the first buffer holds at most
        # FIRST_ROOM of them; from then on the buffer's own size is the room)
        self.length = 0  # answer tokens stored per row
        self.answer_keys: Tensor | None = None  # (b, hkv, room, d), allocated at the 1st step
        self.answer_values: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: object,
               **kwargs: object) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:  # the prompt pass: its tokens are the rows' own block
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states.contiguous(), value_states.contiguous()
            hand_off(self.prefix_keys, self.prefix_values)
            return self.keys, self.values
        end = self.length + key_states.shape[-2]
        if self.answer_keys is None:  # room for the first few tokens; grows with the answers
            self._allocate(key_states, max(min(self.capacity, FIRST_ROOM), end))
        elif end > self.answer_keys.shape[-2]:  # more tokens than planned: grow (a copy, rarely)
            self._resize(None, 2 * end)
        self.answer_keys[:, :, self.length : end] = key_states
        self.answer_values[:, :, self.length : end] = value_states
        self.length = end
        hand_off(self.prefix_keys, self.prefix_values, self.keys, self.values)
        return self.answer_keys[:, :, :end], self.answer_values[:, :, :end]

    @torch.inference_mode()  # the buffers are inference tensors (made in a prompt pass)
    def _allocate(self, like: Tensor, capacity: int) -> None:
        rows, heads, _, head_dim = self.keys.shape
        self.answer_keys = like.new_empty(rows, heads, capacity, head_dim)
        self.answer_values = like.new_empty(rows, heads, capacity, head_dim)

    @torch.inference_mode()
    def _resize(self, indices: Tensor | None, capacity: int | None = None) -> None:
        """Keep the rows `indices` (None: every row): their prompt block (one contiguous copy)
        and the stored part of their answers, in a fresh answer buffer of `capacity` (None: the
        same room as now)."""
        if indices is not None:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)
        if self.answer_keys is None:
            return
        old_keys, old_values = self.answer_keys, self.answer_values
        self._allocate(old_keys, capacity or old_keys.shape[-2])
        for old, new in ((old_keys, self.answer_keys), (old_values, self.answer_values)):
            stored = old[:, :, : self.length]
            new[:, :, : self.length] = stored if indices is None else stored.index_select(0, indices)

    @torch.inference_mode()
    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep rows `indices` (repeated for one row per sample, or the unfinished ones)."""
        if self.is_initialized:
            self._resize(indices.to(self.device))

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        own = self.keys.shape[-2] if self.is_initialized else 0
        return self.prefix_keys.shape[-2] + own + self.length

    def get_max_length(self) -> int:
        return -1


class SharedPrefixCache(Cache):
    """A cache whose layers share one prompt prefix across the batch (see the module doc)."""

    def __init__(self, prefix: list[tuple[Tensor, Tensor]], capacity: int) -> None:
        super().__init__(layers=[SharedPrefixLayer(k, v, capacity) for k, v in prefix])

