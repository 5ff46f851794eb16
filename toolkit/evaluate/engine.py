"""The packed prefix-tree engine: log-likelihoods of token requests on a PyTorch model, faster than lm-eval.

lm-eval runs every ``context + choice`` as its own full sequence and computes the LM head and a
log-softmax over the whole vocabulary at every position. :func:`score_token_requests` gives the same sums
(up to float rounding; tests check <= 1e-4 against :func:`naive_loglikelihoods` on tiny models) with
less work:

1. *Shared prefix, computed once.* The requests of one example usually share a long token prefix (the
   context; for PIQA often words of the two solutions too; for WinoGrande the sentence before the blank).
   An example's requests (those starting with the same token) become one *tree segment*: the common prefix
   once, then each request's own remaining tokens, with positions continuing the prefix and attention that
   sees the prefix and the request's own tokens only (:mod:`toolkit.evaluate.tree_attention`, plugged into
   the model through transformers' ``AttentionInterface``). One forward computes an example's prefix and
   all its choices; no KV cache is copied out per choice.
2. *Packed, not padded.* Segments run end to end in batch-1 forwards of ``DEFAULT_BATCH_TOKENS`` tokens, so
   every linear layer is one big matmul with no padding; only attention gathers segments into a padded
   batch (native grouped-query attention, no ``repeat_kv`` copies).
3. *LM head only where it is needed.* The decoder (``model.get_decoder()``) returns hidden states; the LM
   head and log-softmax run only on the rows that predict a continuation token (:func:`token_logprobs`),
   under ``torch.inference_mode``.

:func:`tree_token_count` says how many tokens the engine runs for given inputs, without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from toolkit.errors import UserError
from toolkit.evaluate.tokenization import lm_eval_inputs, model_max_length

# Tokens per packed forward: big enough for efficient matmuls, small enough that a CPU's activations stay
# in cache; GPUs may want more (``toolkit eval --batch-tokens``).
DEFAULT_BATCH_TOKENS = 2048


@dataclass
class _Group:
    """Requests of one example that share a token prefix (``prefix`` = their longest common prefix)."""

    prefix: list[int]
    members: list[int]  # request indices


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of ``seqs`` share."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def _build_groups(inputs: Sequence[list[int]], owners: Sequence[int]) -> list[_Group]:
    """Group the requests of each example by first token and give each group its common prefix."""
    by_key: dict[tuple[int, int], list[int]] = {}
    for r, (x, owner) in enumerate(zip(inputs, owners)):
        by_key.setdefault((owner, x[0]), []).append(r)
    groups = []
    for members in by_key.values():
        seqs = [inputs[r] for r in members]
        p = common_prefix_length(seqs)
        groups.append(_Group(list(seqs[0][:p]), members))
    return groups


@dataclass(frozen=True)
class _Segment:
    """A group laid out as a tree: ``[prefix | suffix of member 0 | suffix of member 1 | ...]``."""

    ids: list[int]
    positions: list[int]
    members: list[int]  # -1 for the prefix, else the member's index in the group
    starts: list[int]  # offset of each member's suffix in the segment

    @staticmethod
    def of(group: _Group, inputs: Sequence[list[int]]) -> "_Segment":
        p = len(group.prefix)
        ids, positions, members, starts = list(group.prefix), list(range(p)), [-1] * p, []
        for m, r in enumerate(group.members):
            x = inputs[r]
            starts.append(len(ids))
            ids.extend(x[p:])
            positions.extend(range(p, len(x)))
            members.extend([m] * (len(x) - p))
        return _Segment(ids, positions, members, starts)


def tree_token_count(inputs: Sequence[list[int]], owners: Sequence[int]) -> int:
    """Tokens :func:`score_token_requests` runs through the decoder for these model inputs (each already
    truncated, as :func:`~toolkit.evaluate.tokenization.lm_eval_inputs` makes them), where ``owners[r]``
    is the example of input ``r``: per group of an example's inputs, their common prefix once plus each
    input's remaining tokens. No model is needed."""
    return sum(len(_Segment.of(g, inputs).ids) for g in _build_groups(inputs, owners))


def _segments_per_forward(sizes: Sequence[int], max_tokens: int) -> list[list[int]]:
    """The segments each forward runs (indices into ``sizes``, the segments' token counts): longest first,
    packed greedily into forwards of at most ``max_tokens`` tokens (a longer segment runs alone);
    attention's padded batch (``count x longest``, and its ``longest^2`` score matrices) is kept within
    ``2 x max_tokens`` tokens and ``512 x max_tokens`` scores."""
    out, cur, total = [], [], 0
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        n = sizes[i]
        if cur:
            longest = sizes[cur[0]]
            count = len(cur) + 1
            if total + n > max_tokens or count * longest > 2 * max_tokens or count * longest ** 2 > 512 * max_tokens:
                out.append(cur)
                cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        out.append(cur)
    return out


def decoder_and_head(model):
    """(decoder, LM head) of a Hugging Face causal LM: the decoder returns hidden states, so the head can
    run on the rows that are scored only."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise UserError(f"{type(model).__name__}: needs a Hugging Face causal LM (get_decoder() and an LM head)")
    return decoder, head


def _head_chunk_rows(head, max_bytes: int = 128 << 20) -> int:
    """Rows of one LM-head + log-softmax call: big enough for an efficient matmul (the head's weight is
    read once per call), small enough that the (rows, vocab) logits stay within ``max_bytes``."""
    vocab = head.weight.shape[0] if hasattr(head, "weight") else 32000
    return max(64, min(2048, max_bytes // (4 * vocab)))


def token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """log P(target | hidden) per row: the LM head and a log-softmax on these rows only. (N,)

    The log-softmax runs as lm-eval's does (``F.log_softmax`` in the logits' dtype), upcast to float32 only
    for half-precision models. In float32, a 49k-way softmax carries ~1e-5 of summation rounding per token,
    and a different reduction (``logsumexp``) shifts sums over 200 tokens by ~2e-3: same function, same code.
    """
    chunk_rows = chunk_rows or _head_chunk_rows(head)
    out = torch.empty(hidden.shape[0], dtype=torch.float64, device=hidden.device)
    for i in range(0, hidden.shape[0], chunk_rows):
        logits = head(hidden[i:i + chunk_rows])  # (n, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out[i:i + chunk_rows] = logp.gather(1, targets[i:i + chunk_rows, None]).squeeze(1).double()
    return out


@torch.inference_mode()
def score_token_requests(
    model,
    requests: Sequence[tuple[list[int], list[int]]],
    owners: Sequence[int] | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Sum of continuation log-probabilities for (context tokens, continuation tokens) requests.

    ``owners[r]`` says which example request ``r`` belongs to: requests of one example share their common
    prefix (pass ``None`` to treat each request alone). Returns (log-likelihoods (R,), tokens run).

    Each group of requests becomes one tree segment (:mod:`toolkit.evaluate.tree_attention`): its common prefix
    once, then each request's remaining tokens, positions continuing the prefix. Segments are packed,
    longest first, into batch-1 forwards of at most ``max_batch_tokens`` tokens, with no padding in the
    linear layers; the LM head then runs on the rows that predict a continuation token.
    """
    from toolkit.evaluate.tree_attention import TreeLayout, tree_attention

    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    inputs, starts, targets = lm_eval_inputs(requests, model_max_length(model))
    owners = list(range(len(requests))) if owners is None else list(owners)
    groups = _build_groups(inputs, owners)
    segments = [_Segment.of(g, inputs) for g in groups]
    loglik = torch.zeros(len(requests), dtype=torch.float64)
    tokens_run = 0
    with tree_attention(model):
        for forward in _segments_per_forward([len(s.ids) for s in segments], max_batch_tokens):
            ids, positions, rows, tgt, seg = [], [], [], [], []
            for i in forward:
                s, g, offset = segments[i], groups[i], len(ids)
                p = len(g.prefix)
                for m, r in enumerate(g.members):
                    for t, q in zip(targets[r], range(starts[r], len(inputs[r]))):  # position q predicts t
                        rows.append(offset + (q if q < p else s.starts[m] + q - p))
                        tgt.append(t)
                        seg.append(r)
                ids.extend(s.ids)
                positions.extend(s.positions)
            layout = TreeLayout.build([(segments[i].positions, segments[i].members) for i in forward], device)
            hidden = decoder(input_ids=torch.tensor([ids], device=device),
                             position_ids=torch.tensor([positions], device=device),
                             use_cache=False, toolkit_tree=layout).last_hidden_state[0]  # (T, H)
            if not layout.calls:  # its attention ignored the layout: the scores would be silently wrong
                raise UserError(f"{type(model).__name__}: its attention does not go through transformers' "
                                "AttentionInterface, which the evaluator's tree attention needs")
            tokens_run += len(ids)
            lp = token_logprobs(head, hidden.index_select(0, torch.tensor(rows, device=device)),
                                 torch.tensor(tgt, device=device))
            loglik.index_add_(0, torch.tensor(seg), lp.cpu())
            if on_batch is not None:
                on_batch(sum(len(groups[i].members) for i in forward))
    return loglik.numpy(), tokens_run


@torch.inference_mode()
def naive_loglikelihoods(model, requests: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
    """Reference: each request as one full sequence through the whole model (no sharing, no batching)."""
    device = next(model.parameters()).device
    out = []
    for ctx, cont in requests:
        x = torch.tensor([ctx + cont[:-1]], device=device)
        logits = model(input_ids=x).logits[0]  # (T, V)
        logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
        rows = logp[len(ctx) - 1:]
        out.append(float(rows.gather(1, torch.tensor(cont, device=device)[:, None]).sum()))
    return np.array(out)

