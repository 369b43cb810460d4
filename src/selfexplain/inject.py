"""Hooks as context managers, always removed in `finally`.

Both hook the *input* of a decoder block (a forward pre-hook), i.e. the residual stream entering
block L = output of block L-1 = `hidden_states[L]` in HF terms. Pre-hooks work for L = 0 too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


def _hidden_of(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def replaced_at(layer: nn.Module, positions: Tensor, vectors: Tensor) -> Iterator[None]:
    """Replace the residual entering `layer` at `positions` by `vectors`, prompt pass only.

    positions: (n_positions,) indices into the sequence of the forward call (relative to any
    cached prefix); vectors: (batch, d_model), one vector per row, written at every position.
    A call with sequence length 1 is a KV-cache decode step: the prompt is already patched and its
    keys/values persist in the cache, so the hook leaves it alone.
    """

    def hook(_module: nn.Module, args: tuple, kwargs: dict):
        hidden = _hidden_of(args, kwargs)  # (batch, seq, d_model)
        if hidden.shape[1] == 1:
            return None
        hidden = hidden.clone()
        hidden[:, positions] = vectors[:, None, :].to(hidden.device, hidden.dtype)  # (batch, n_positions, d_model)
        return _with_hidden(args, kwargs, hidden)

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class Captured:
    """Holder for what `captured_at` saw: `.last` is (batch, d_model) at the last position."""

    last: Tensor | None = None


@contextmanager
def captured_at(layer: nn.Module) -> Iterator[Captured]:
    """Capture the residual entering `layer` at the last position of each forward call.

    `output_hidden_states` would not show hooked values; our own hook after the injection does.
    """
    captured = Captured()

    def hook(_module: nn.Module, args: tuple, kwargs: dict):
        captured.last = _hidden_of(args, kwargs)[:, -1].detach().clone()  # (batch, d_model)
        return None

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
