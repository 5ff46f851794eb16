"""Tree attention for packed forwards: many requests that share prefixes, in one batch-1 forward.

An example's requests (``context + choice``, one per choice) usually share a long token prefix. Laid out
as a *tree* segment ``[prefix | suffix of choice 1 | suffix of choice 2 | ...]`` with each choice's
positions continuing the prefix, one forward computes the prefix once and every choice on top of it:
token ``t`` attends to token ``u`` iff ``pos(u) <= pos(t)`` and ``u`` is in the prefix or in ``t``'s own
choice. Many such segments are packed end to end into one ``(1, T)`` sequence, so every linear layer runs
as one ``T x hidden`` matmul with no padding at all; only attention needs the segment structure, and it
gathers each segment into a padded ``(segments, heads, longest, head_dim)`` batch for
``scaled_dot_product_attention`` with the tree mask and native grouped-query attention (``enable_gqa``:
no ``repeat_kv`` copies).

It plugs into transformers' own models through their extension points, so the model code is unchanged:
the attention function is registered in ``AttentionInterface`` under :data:`NAME`; since no mask function
is registered under that name, the model builds no mask of its own; the :class:`TreeLayout` reaches the
attention function through the forward's ``**kwargs`` (``toolkit_tree=``), as transformers passes extra
keyword arguments down to it. :func:`tree_attention` switches a model's ``config._attn_implementation``
for the duration of a ``with`` block and always puts the previous value back.

Why hand-written: transformers' packed-sequence support (``position_ids`` restarts) is flash-attention
varlen on CUDA, or a dense block-diagonal mask over the whole pack elsewhere (quadratic in the pack, and
no shared prefixes); no kept library offers prefix-sharing tree attention on the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

NAME = "toolkit_tree"
_PAD_MEMBER = -2  # member id of padding (prefix tokens are -1, choices 0, 1, ...)


@dataclass(frozen=True)
class TreeLayout:
    """Where the packed tokens of each segment sit, and who may attend to whom.

    ``index[s, j]``: packed position of segment ``s``'s ``j``-th token (0 for padding); ``valid``: the
    flat ``s * longest + j`` positions of real tokens, in packed order; ``mask[s, 0, i, j]``: token ``i`` of
    segment ``s`` attends to its token ``j``.
    """

    index: torch.Tensor  # (S, L) long
    valid: torch.Tensor  # (T,) long
    mask: torch.Tensor  # (S, 1, L, L) bool
    calls: list = field(default_factory=list)  # layer indices that ran tree attention with this layout

    @staticmethod
    def build(segments: Sequence[tuple[Sequence[int], Sequence[int]]], device: torch.device | str = "cpu") -> "TreeLayout":
        """``segments``: per segment, (positions, member ids) of its tokens in packed order; member ``-1``
        is the shared prefix, members ``0, 1, ...`` the choices."""
        longest = max(len(p) for p, _ in segments)
        n = len(segments)
        index = torch.zeros((n, longest), dtype=torch.long)
        pos = torch.full((n, longest), torch.iinfo(torch.long).max, dtype=torch.long)
        member = torch.full((n, longest), _PAD_MEMBER, dtype=torch.long)
        valid, start = [], 0
        for s, (p, m) in enumerate(segments):
            k = len(p)
            index[s, :k] = torch.arange(start, start + k)
            pos[s, :k] = torch.as_tensor(p, dtype=torch.long)
            member[s, :k] = torch.as_tensor(m, dtype=torch.long)
            valid.append(torch.arange(s * longest, s * longest + k))
            start += k
        q_pos, k_pos = pos[:, :, None], pos[:, None, :]
        q_mem, k_mem = member[:, :, None], member[:, None, :]
        # Padding queries see the prefix (no all-masked rows); padding keys are seen by no one.
        mask = (k_pos <= q_pos) & ((k_mem == -1) | (k_mem == q_mem)) & (k_mem != _PAD_MEMBER)
        return TreeLayout(index.to(device), torch.cat(valid).to(device), mask[:, None].to(device))


def tree_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, toolkit_tree: TreeLayout | None = None, **kwargs):
    """transformers attention-interface function: ``query`` (1, H, T, D), ``key``/``value`` (1, KV, T, D),
    returns (1, T, H, D) as transformers' own SDPA function does."""
    if toolkit_tree is None:
        raise RuntimeError(f"attention implementation {NAME!r} needs toolkit_tree= (a TreeLayout) in the forward call")
    layout = toolkit_tree
    layout.calls.append(getattr(module, "layer_idx", None))
    n, longest = layout.index.shape
    window = kwargs.get("sliding_window")
    if window is not None and longest > window:  # Mistral/Qwen2-style local attention is not modelled here
        raise NotImplementedError(f"{NAME}: a {longest}-token segment exceeds the model's sliding window of {window}")
    flat = layout.index.reshape(-1)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (1, h, T, D) -> (S, h, L, D)
        tokens = x[0].transpose(0, 1)  # (T, h, D)
        return tokens.index_select(0, flat).view(n, longest, *tokens.shape[1:]).transpose(1, 2)

    q, k, v = gather(query), gather(key), gather(value)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=layout.mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])  # (S, H, L, D)
    out = out.transpose(1, 2).reshape(n * longest, out.shape[1], out.shape[3]).index_select(0, layout.valid)
    return out.unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, tree_attention_forward)


@contextmanager
def tree_attention(model) -> Iterator[None]:
    """Within the block, ``model`` (a transformers model whose attention goes through ``AttentionInterface``)
    runs tree attention; it needs ``toolkit_tree=TreeLayout`` in each forward call."""
    _register()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
