"""Fast log-likelihood evaluation that gives lm-evaluation-harness' numbers, and windowed perplexity.

**Same numbers as lm-eval.** Each choice is scored as the sum of ``log P(continuation | context)`` over
the continuation's tokens, tokenized exactly as lm-eval's ``HFLM`` does (``lm_eval/api/model.py``
``loglikelihood`` / ``_encode_pair`` and ``models/huggingface.py`` ``tok_encode``):

* trailing spaces of the context move to the front of the continuation;
* ``whole = encode(context + continuation)``, ``ctx = encode(context)``, ``cont = whole[len(ctx):]``; the
  model reads ``ctx + cont`` (not ``whole``: the two differ when a token straddles the boundary);
* ``encode`` uses the tokenizer's default special tokens (``add_bos_token=None`` in lm-eval), except that
  a string already starting with the prefix token's text is encoded without them. SmolLM2 adds no BOS;
* an empty context (WinoGrande's full-sentence fallback) becomes the *prefix token*: BOS if the
  tokenizer has one, else EOS; if the continuation already starts with it, its first token is the context;
* the input is ``(ctx + cont)[-(max_length + 1):][:-1]`` with lm-eval's ``max_length`` (the config's
  ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else 2048): an over-long context loses its
  *left* end and the continuation is kept whole. ``ExampleResult.truncated`` / ``TaskResult.
  truncated_examples`` record it and ``toolkit eval`` / ``search`` say so in one warning line;
* a continuation longer than ``max_length`` tokens is an error, as in lm-eval (``assert
  len(continuation_enc) <= self.max_length`` in ``HFLM._loglikelihood_tokens``): cutting it would score
  a different answer. :func:`check_task_lengths` finds one (file and line) before the model loads;
* ``acc`` = argmax of the sums; ``acc_norm`` = argmax of sum / ``Example.norm_lengths`` (lm-eval's
  character length of the choice, see :mod:`toolkit.tasks`); ties go to the first choice (``np.argmax``);
  standard errors are lm-eval's ``mean_stderr`` (sample standard deviation / sqrt(n)). With several gold
  choices (an lm-eval YAML's list target) the prediction counts when it is any of them; ``mc2``, for
  examples that carry ``labels``, is the probability mass on the true answers (:mod:`toolkit.tasks.metrics`).

**Faster than lm-eval** (which runs every ``context + choice`` as its own full sequence and computes the
LM head and a log-softmax over the whole vocabulary at every position):

1. *Shared prefix, computed once.* The requests of one example usually share a long token prefix (the
   context; for PIQA often words of the two solutions too; for WinoGrande the sentence before the blank).
   An example's requests (those starting with the same token) become one *tree segment*: the common prefix once, then each request's own
   remaining tokens, with positions continuing the prefix and attention that sees the prefix and the
   request's own tokens only (:mod:`toolkit.tree_attention`, plugged into the model through transformers'
   ``AttentionInterface``). One forward computes an example's prefix and all its choices; no KV cache is
   copied out per choice.
2. *Packed, not padded.* Segments run end to end in batch-1 forwards of ``DEFAULT_BATCH_TOKENS`` tokens, so
   every linear layer is one big matmul with no padding; only attention gathers segments into a padded
   batch (native grouped-query attention, no ``repeat_kv`` copies).
3. *LM head only where it is needed.* The decoder (``model.get_decoder()``) returns hidden states; the LM
   head and log-softmax run only on the rows that predict a continuation token, under
   ``torch.inference_mode``.

**Bounded tokenization.** lm-eval tokenizes an over-long context whole and then keeps its last tokens.
A multi-megabyte context (one 2.6 MB line) would cost seconds to minutes of tokenizer time per choice, so
a context is first cut to its last few thousand characters that still encode to more than ``max_length``
tokens plus a 64-token margin (the cut starts a whitespace run, so pre-tokenization after it is
unchanged): the tokens kept are lm-eval's, the work is a small multiple of ``max_length``.

**Engines.** Building requests and computing metrics is the evaluator's; scoring the requests is a
:class:`Scorer`'s: :class:`TorchScorer` (the packed tree engine above, on a PyTorch model) or
:class:`LlamaCppScorer` (a GGUF file in llama.cpp, one request after another with the KV cache of the
shared prefix kept, log-softmax in float64), so a quantized artifact's accuracy is measured in the engine
it is deployed in, on the same requests. Its tokenizer is the one transformers builds from the GGUF
(:func:`gguf_tokenizer`), the PyTorch path's. On an f32 GGUF export both engines give the same
predictions (``tests/test_eval_llamacpp.py``).

The result equals a plain full-sequence forward up to float rounding (tests check <= 1e-4 on tiny
models); ``benchmarks/evaluator.py`` checks the numbers against lm-eval itself.

Why hand-written: lm-eval is the reference, but it is a heavy dependency, slower for this workload
(``benchmarks/evaluator.py`` measures by how much) and (in the releases that pin ``huggingface_hub<1.0``) incompatible with this project's transformers 5.
It stays a cross-check (``benchmarks/evaluator.py``), never a runtime dependency.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from toolkit.errors import UserError
from toolkit.tasks import PARTS, Example, Task, TaskData, get_task, load_task
from toolkit.tasks.metrics import METRICS, mc2 as mc2_score

EVAL_VERSION = 1
# Tokens per packed forward: on a 2-core AVX2 CPU, 1024-2048 ran HellaSwag ~10 % faster than 4096 (whose
# activations spill out of cache); GPUs may want more (``toolkit eval --batch-tokens``).
DEFAULT_BATCH_TOKENS = 2048
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length
_CUT_MARGIN_TOKENS = 64  # tokens kept beyond max_length when an over-long context is cut before encoding


# -- tokenization, exactly as lm-eval's HFLM ---------------------------------------------------------
class LmEvalTokenizer:
    """Encodes (context, continuation) pairs the way lm-eval's ``HFLM`` does (see the module docstring)."""

    def __init__(self, tokenizer, add_bos_token: bool | None = None, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        self.max_length = max_length  # the model's; bounds the tokenization of over-long contexts
        self._cut_memo: dict[str, str] = {}
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.prefix_token_id = bos if bos is not None else eos
        if self.prefix_token_id is None:
            raise UserError("tokenizer: has neither a BOS nor an EOS token, needed as the prefix of an empty context")
        self._prefix_text = tokenizer.decode(self.prefix_token_id)
        self._memo: dict[tuple[str, bool | None], list[int]] = {}

    def _kwargs(self, string: str, add_special_tokens: bool | None) -> bool | None:
        if add_special_tokens is not None:
            return add_special_tokens
        if self._prefix_text and string.startswith(self._prefix_text):
            return False
        return self.add_bos_token  # None: the tokenizer's own default

    def encode_many(self, strings: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """``tok_encode`` for many strings at once (one batched call per distinct special-token setting)."""
        todo: dict[bool | None, list[str]] = {}
        keys = []
        for s in strings:
            flag = self._kwargs(s, add_special_tokens)
            keys.append((s, flag))
            if (s, flag) not in self._memo:
                todo.setdefault(flag, []).append(s)
        for flag, batch in todo.items():
            batch = list(dict.fromkeys(batch))
            kw = {} if flag is None else {"add_special_tokens": flag}
            for s, ids in zip(batch, self.tokenizer(batch, **kw)["input_ids"]):
                self._memo[(s, flag)] = list(ids)
        return [self._memo[k] for k in keys]

    def encode(self, string: str, add_special_tokens: bool | None = None) -> list[int]:
        return self.encode_many([string], add_special_tokens)[0]

    def bounded_context(self, context: str) -> str:
        """The end of ``context`` that still encodes to more than ``max_length`` tokens (plus a margin),
        found by encoding growing tails; ``context`` itself when it is short (see the module docstring)."""
        need = (self.max_length or 0) + 1 + _CUT_MARGIN_TOKENS
        width = 8 * need  # characters; a token rarely covers more than 8
        if self.max_length is None or len(context) <= width:
            return context
        if context not in self._cut_memo:
            cut = context
            while width < len(context):
                start = len(context) - width
                # Start at a whitespace run (after a non-space) so the pre-tokenizer splits the tail as it
                # splits the whole; a context with no space nearby is cut where it is.
                start = next((i for i in range(start, min(start + 256, len(context)))
                              if context[i].isspace() and not context[i - 1].isspace()), start)
                tail = context[start:]
                if len(self.tokenizer(tail, add_special_tokens=False)["input_ids"]) >= need:
                    cut = tail
                    break
                width *= 4
            self._cut_memo[context] = cut
        return self._cut_memo[context]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context tokens, continuation tokens) for each pair, as ``LM.loglikelihood`` builds them."""
        moved = []
        for context, continuation in pairs:
            n_spaces = len(context) - len(context.rstrip())
            if context and n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            moved.append((self.bounded_context(context), continuation))
        # Empty contexts take their continuation without special tokens; the rest encode whole and context.
        empty_conts = [c for ctx, c in moved if not ctx]
        full = [ctx + c for ctx, c in moved if ctx] + [ctx for ctx, _ in moved if ctx]
        enc_full = dict(zip(full, self.encode_many(full)))
        enc_empty = dict(zip(empty_conts, self.encode_many(empty_conts, add_special_tokens=False)))
        out = []
        for context, continuation in moved:
            if not context:
                cont = enc_empty[continuation]
                if cont and cont[0] == self.prefix_token_id:
                    out.append((cont[:1], cont[1:]))
                else:
                    out.append(([self.prefix_token_id], cont))
                continue
            ctx = enc_full[context]
            whole = enc_full[context + continuation]
            out.append((ctx, whole[len(ctx):]))
        return out


def model_max_length(model) -> int:
    """lm-eval's ``resolve_max_length`` for a text-only config: the first context length the config names.
    ``model`` is a model, its config, or a ``config.json`` dict."""
    config = getattr(model, "config", model)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = config.get(attr) if isinstance(config, dict) else getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return _DEFAULT_MAX_LENGTH


# -- the scoring engine --------------------------------------------------------------------------------
@dataclass
class _Group:
    """Requests of one example that share a token prefix (``prefix`` = their longest common prefix)."""

    prefix: list[int]
    members: list[int]  # request indices


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
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
        p = _common_prefix(seqs)
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


def _packs(sizes: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Segment indices, longest first, packed greedily into forwards of at most ``max_tokens`` tokens (a
    longer segment runs alone); attention's padded batch (``count x longest``, and its ``longest^2`` score
    matrices) is kept within ``2 x max_tokens`` tokens and ``512 x max_tokens`` scores."""
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


def _decoder_and_head(model):
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


def _token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
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


def _model_inputs(requests: Sequence[tuple[list[int], list[int]]], max_len: int
                  ) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(input tokens, position in the input that predicts the continuation's first token, continuation)
    per request: ``(ctx + cont)[-(max_len + 1):][:-1]``, lm-eval's left truncation. Shared by the engines."""
    inputs, starts, targets = [], [], []
    for ctx, cont in requests:
        if not ctx or not cont:
            raise UserError("evaluate: a request encodes to an empty context or continuation")
        if len(cont) > max_len:
            raise UserError(f"evaluate: a continuation of {len(cont)} tokens exceeds the model's {max_len}")
        x = (ctx + cont)[-(max_len + 1):][:-1]  # lm-eval's left truncation
        inputs.append(x)
        starts.append(len(x) - len(cont))  # position in x that predicts cont[0]
        targets.append(cont)
    return inputs, starts, targets


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

    Each group of requests becomes one tree segment (:mod:`toolkit.tree_attention`): its common prefix
    once, then each request's remaining tokens, positions continuing the prefix. Segments are packed,
    longest first, into batch-1 forwards of at most ``max_batch_tokens`` tokens, with no padding in the
    linear layers; the LM head then runs on the rows that predict a continuation token.
    """
    from toolkit.tree_attention import TreeLayout, tree_attention

    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    inputs, starts, targets = _model_inputs(requests, model_max_length(model))
    owners = list(range(len(requests))) if owners is None else list(owners)
    groups = _build_groups(inputs, owners)
    segments = [_Segment.of(g, inputs) for g in groups]
    loglik = torch.zeros(len(requests), dtype=torch.float64)
    tokens_run = 0
    with tree_attention(model):
        for pack in _packs([len(s.ids) for s in segments], max_batch_tokens):
            ids, positions, rows, tgt, seg = [], [], [], [], []
            for i in pack:
                s, g, offset = segments[i], groups[i], len(ids)
                p = len(g.prefix)
                for m, r in enumerate(g.members):
                    for t, q in zip(targets[r], range(starts[r], len(inputs[r]))):  # position q predicts t
                        rows.append(offset + (q if q < p else s.starts[m] + q - p))
                        tgt.append(t)
                        seg.append(r)
                ids.extend(s.ids)
                positions.extend(s.positions)
            layout = TreeLayout.build([(segments[i].positions, segments[i].members) for i in pack], device)
            hidden = decoder(input_ids=torch.tensor([ids], device=device),
                             position_ids=torch.tensor([positions], device=device),
                             use_cache=False, toolkit_tree=layout).last_hidden_state[0]  # (T, H)
            if not layout.calls:  # its attention ignored the layout: the scores would be silently wrong
                raise UserError(f"{type(model).__name__}: its attention does not go through transformers' "
                                "AttentionInterface, which the evaluator's tree attention needs")
            tokens_run += len(ids)
            lp = _token_logprobs(head, hidden.index_select(0, torch.tensor(rows, device=device)),
                                 torch.tensor(tgt, device=device))
            loglik.index_add_(0, torch.tensor(seg), lp.cpu())
            if on_batch is not None:
                on_batch(sum(len(groups[i].members) for i in pack))
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


# -- scoring backends ----------------------------------------------------------------------------------
class Scorer:
    """What the evaluator asks of an engine: the log-likelihood sum of each (context tokens, continuation
    tokens) request. Everything else (tokenization, subsets, splits, metrics, the result record) is the
    evaluator's and the same for every engine.

    ``engine`` names the engine (:data:`toolkit.engines.ENGINES`); ``max_length`` is lm-eval's maximum
    length of the model (the left truncation and the over-long continuation check use it).
    """

    engine: str = ""
    max_length: int = _DEFAULT_MAX_LENGTH

    def score(self, requests: Sequence[tuple[list[int], list[int]]], owners: Sequence[int] | None = None,
              on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
        """(log-likelihoods (R,) float64, tokens the engine computed); ``on_batch(n)`` after n requests."""
        raise NotImplementedError


class TorchScorer(Scorer):
    """A PyTorch model, scored by the packed tree engine (:func:`score_token_requests`)."""

    engine = "torch"

    def __init__(self, model, max_batch_tokens: int = DEFAULT_BATCH_TOKENS):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_length = model_max_length(model)

    def score(self, requests, owners=None, on_batch=None):
        return score_token_requests(self.model, requests, owners, max_batch_tokens=self.max_batch_tokens,
                                    on_batch=on_batch)


_LLAMACPP_CTX_STEP = 64  # the llama.cpp context is the longest input rounded up to this many tokens



class LlamaCppScorer(Scorer):
    """A GGUF file, scored in llama.cpp (:class:`toolkit.engines.llamacpp.LlamaCpp`, ``logits_all``).

    Requests run one after another in lexicographic order of their input tokens, so neighbours share the
    longest prefixes (an example's context, few-shot examples); :meth:`LlamaCpp.logits` keeps the KV cache
    of the prefix shared with the previous request and computes only the rest. The log-softmax of the
    rows that predict continuation tokens is computed in float64 from llama.cpp's float32 logits.

    The llama.cpp context is opened on the first :meth:`score` with room for its longest input (rounded
    up to 64 tokens: the ``logits_all`` buffer is ``n_ctx x vocab`` floats) and reopened larger when a
    later call needs it. ``max_length`` is the GGUF's ``<arch>.context_length``, which is what transformers
    makes ``max_position_embeddings`` of, so lm-eval's truncation is the same as the PyTorch path's on
    the same file. ``kv_f32``: an f32 KV cache (for parity with PyTorch; llama.cpp's default f16 cache
    moves SmolLM2's logits by ~3e-2).
    """

    engine = "llama.cpp"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, kv_f32: bool = False):
        from toolkit.engines import require
        from toolkit.engines.llamacpp import GGUF_TYPES, metadata

        require("llama.cpp")
        self.path = Path(path)
        meta = metadata(self.path)
        arch = meta.get("general.architecture")
        ctx_train = meta.get(f"{arch}.context_length")
        self.n_ctx_train = int(ctx_train) if isinstance(ctx_train, (int, np.integer)) and ctx_train > 0 else None
        self.max_length = self.n_ctx_train or _DEFAULT_MAX_LENGTH  # transformers' default when it is absent
        ftype = meta.get("general.file_type")
        by_id = {t.ftype: t.name for t in GGUF_TYPES.values()}
        self.file_type = by_id.get(int(ftype), int(ftype)) if isinstance(ftype, (int, np.integer)) else None
        self.threads = threads
        self.kv_f32 = kv_f32
        self._llm = None

    def _context(self, longest: int):
        if self.n_ctx_train is not None and longest > self.n_ctx_train:
            raise UserError(f"{self.path}: a {longest}-token request exceeds the model's trained context of "
                            f"{self.n_ctx_train} tokens")
        if self._llm is None or self._llm.n_ctx < longest:
            from toolkit.engines.llamacpp import LlamaCpp

            self.close()
            n_ctx = -(-longest // _LLAMACPP_CTX_STEP) * _LLAMACPP_CTX_STEP
            if self.n_ctx_train is not None:
                n_ctx = min(n_ctx, self.n_ctx_train)
            self._llm = LlamaCpp(self.path, threads=self.threads, n_ctx=n_ctx, kv_f32=self.kv_f32, logits_all=True)
        return self._llm

    def score(self, requests, owners=None, on_batch=None):
        from toolkit.engines.llamacpp import target_logprobs

        inputs, starts, targets = _model_inputs(requests, self.max_length)
        llm = self._context(max(len(x) for x in inputs))
        loglik = np.zeros(len(inputs), dtype=np.float64)
        tokens_run, previous = 0, []
        for r in sorted(range(len(inputs)), key=inputs.__getitem__):
            x = inputs[r]
            keep = min(_common_prefix([previous, x]), len(x) - 1) if previous else 0  # what logits() keeps
            logits = llm.logits(x, reuse_prefix=True)  # (T, V)
            loglik[r] = target_logprobs(logits[starts[r]:], targets[r]).sum()
            tokens_run += len(x) - keep
            previous = x
            if on_batch is not None:
                on_batch(1)
        return loglik, tokens_run

    @property
    def threads_used(self) -> int | None:
        return None if self._llm is None else self._llm.threads

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> "LlamaCppScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_scorer(model, max_batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Scorer:
    """``model`` if it is already a :class:`Scorer`, else a PyTorch model scored by :class:`TorchScorer`."""
    return model if isinstance(model, Scorer) else TorchScorer(model, max_batch_tokens)


def gguf_tokenizer(path: str | os.PathLike):
    """The HF tokenizer transformers builds from a GGUF file, the one :func:`toolkit.models.load_model`
    gives the PyTorch path, without dequantizing the weights.

    It is read from the file's dequantized cache folder when that exists (exactly the PyTorch path's
    tokenizer), else built from the GGUF metadata by transformers (``gguf_file=``; ~11 s for SmolLM2's
    49k-token vocabulary here) and saved, as loading saves it, to a tokenizer-only cache keyed by the
    file's sha256 (later reads ~0.4 s).
    """
    from transformers import AutoTokenizer

    from toolkit.fileio import atomic_directory, cache_dir, sha256_file_cached
    from toolkit.models.loading import check_gguf, gguf_cache_folder

    path = Path(path).resolve()
    full = gguf_cache_folder(path)
    folder = full if (full / "config.json").is_file() else (
        cache_dir() / "tokenizers" / f"gguf-{sha256_file_cached(path)[:16]}")
    if not (folder / "tokenizer_config.json").is_file():
        check_gguf(path, dtype_bytes=0)  # magic, metadata, tensor table; llama.cpp maps the weights, so no memory bound
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions on a bad vocabulary
            raise UserError(f"{path}: transformers cannot build a tokenizer from its metadata ({exc})") from None
        with atomic_directory(folder, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no usable tokenizer in the cache folder ({exc})") from None


# -- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleResult:
    id: str
    label: int
    loglikelihoods: tuple[float, ...]
    pred: int
    pred_norm: int
    truncated: bool = False  # a context lost its left end to the model's max length (as in lm-eval)
    golds: tuple[int, ...] = ()  # every true choice when there are several (Example.golds)
    multiple_target: bool = False  # acc / acc_norm count any of golds (an lm-eval YAML's list target)

    def score(self, metric: str) -> float:
        """This example's ``metric``: 0/1 for ``acc`` / ``acc_norm``, the true answers' probability mass for
        ``mc2`` (see :mod:`toolkit.tasks.metrics`)."""
        if metric == "mc2":
            if not self.golds:
                raise ValueError(f"example {self.id}: mc2 needs several true answers (labels)")
            return mc2_score(self.loglikelihoods, self.golds)
        if metric not in ("acc", "acc_norm"):
            raise ValueError(f"unknown metric {metric!r}")
        pred = self.pred if metric == "acc" else self.pred_norm
        return float(pred in self.golds if self.multiple_target else pred == self.label)

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "label": self.label, "loglikelihoods": list(self.loglikelihoods),
             "pred": self.pred, "pred_norm": self.pred_norm, "truncated": self.truncated}
        if self.golds:
            d["golds"] = list(self.golds)
            d["multiple_target"] = self.multiple_target
        return d


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of a model on a task (or a seeded subset of it), with lm-eval's metrics."""

    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    seconds: float  # wall time
    metrics: tuple[str, ...]  # the metrics lm-eval reports for this task
    higher_is_better: dict[str, bool]
    num_fewshot: int = 0
    limit: int | None = None
    seed: int = 0
    split: str = "all"  # the task's part the examples come from (toolkit.tasks: "search", "report", "all")
    tokens_forward: int = 0  # tokens the engine computed (shared prefixes once)
    cpu_seconds: float = 0.0  # process CPU time (all threads): the work, whatever else shares the cores
    truncated_examples: int = 0  # examples whose context was cut from the left to the model's max length
    per_example: tuple[ExampleResult, ...] = field(default=(), repr=False)
    engine: str = "torch"  # what scored the requests (toolkit.engines: "torch", "llama.cpp")
    mc2: float | None = None  # for tasks whose examples carry several true answers (labels)
    mc2_stderr: float | None = None
    chance: dict[str, float] = field(default_factory=dict)  # metric -> expected value of uniform guessing
    version: int = EVAL_VERSION

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("TaskResult: n must be positive")
        for name in ("acc", "acc_norm", "mc2"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"TaskResult: {name} must be in [0, 1], got {v}")
        if self.split not in PARTS:
            raise ValueError(f"TaskResult: split must be one of {', '.join(PARTS)}, got {self.split!r}")
        from toolkit.engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"TaskResult: engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    def value(self, metric: str) -> float:
        """The mean of ``metric`` ("acc", "acc_norm" or "mc2") over the examples."""
        v = getattr(self, metric, None) if metric in METRICS else None
        if v is None:
            raise UserError(f"task {self.task}: metric {metric!r} was not measured (it has "
                            f"{', '.join(m for m in METRICS if getattr(self, m) is not None)})")
        return float(v)

    def stderr(self, metric: str) -> float:
        self.value(metric)
        return float(getattr(self, f"{metric}_stderr"))

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        d = {
            "version": self.version, "task": self.task, "n": self.n, "num_fewshot": self.num_fewshot,
            "limit": self.limit, "seed": self.seed, "split": self.split, "acc": self.acc, "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm, "acc_norm_stderr": self.acc_norm_stderr, "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds, "tokens_forward": self.tokens_forward,
            "truncated_examples": self.truncated_examples, "engine": self.engine, "metrics": list(self.metrics),
            "higher_is_better": dict(self.higher_is_better), "chance": dict(self.chance),
        }
        if self.mc2 is not None:
            d["mc2"], d["mc2_stderr"] = self.mc2, self.mc2_stderr
        if per_example:
            d["per_example"] = [e.to_dict() for e in self.per_example]
        return d


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n) (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def encode_examples(enc: LmEvalTokenizer, examples: Sequence[Example], file: str | os.PathLike | None = None
                    ) -> tuple[list[tuple[list[int], list[int]]], list[int], list[bool]]:
    """(encoded requests, owning example of each, whether each example's context gets cut).

    Refuses, naming the file and line, a choice that encodes to no tokens or (with ``enc.max_length``) a
    continuation longer than the model's maximum length, which lm-eval refuses too.
    """
    pairs, owners = [], []
    for e, ex in enumerate(examples):
        pairs.extend(ex.requests)
        owners.extend([e] * ex.num_choices)
    encoded = enc.encode_pairs(pairs)
    truncated = [False] * len(examples)
    first = 0
    for r, ((ctx, cont), o) in enumerate(zip(encoded, owners)):
        ex = examples[o]
        first = r if r == 0 or owners[r - 1] != o else first
        where = f"{file}:{ex.line}" if file else f"example {ex.id} (line {ex.line})"
        if not cont:
            raise UserError(f"{where}: choice {r - first}: encodes to no tokens")
        if enc.max_length is not None:
            if len(cont) > enc.max_length:
                raise UserError(f"{where}: choice {r - first}: the continuation is {len(cont)} tokens, longer than the "
                                f"model's maximum length {enc.max_length} (lm-eval refuses it too)")
            truncated[o] |= len(ctx) + len(cont) > enc.max_length + 1
    return encoded, owners, truncated


def check_task_lengths(data: TaskData, tokenizer, max_length: int, add_bos_token: bool | None = None) -> int:
    """Encode ``data`` as the evaluator will, before any model loads: raises the errors
    :func:`encode_examples` raises, and returns how many examples' contexts will be cut."""
    _, _, truncated = encode_examples(LmEvalTokenizer(tokenizer, add_bos_token, max_length), data.examples, data.file)
    return sum(truncated)


def truncation_warning(task: str, truncated: int, total: int, max_length: int) -> str:
    """The one line the CLI prints when contexts are cut (``truncated`` > 0)."""
    return (f"warning: {task}: {truncated} of {total} examples are longer than the model's maximum length of "
            f"{max_length} tokens; their contexts are cut from the left, as lm-eval does")


def peek_tokenizer(source: str | os.PathLike) -> tuple[Any, int, dict] | None:
    """A model's tokenizer, lm-eval maximum length and ``config.json``, read without loading its weights,
    so that task files (:func:`check_task_lengths`) and sub-networks can be checked before the model
    loads. None when that needs the model itself (a GGUF that was never dequantized: check after loading)."""
    from toolkit.models.loading import check_architecture, gguf_cache_folder, resolve_source

    src = resolve_source(source)
    folder = src.path if src.kind == "hf" else gguf_cache_folder(src.path)
    if not (folder / "config.json").is_file():
        return None
    config = check_architecture(folder)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no usable tokenizer in the model folder ({exc})") from None
    return tokenizer, model_max_length(config), config


def score_examples(model, tokenizer, examples: Sequence[Example], add_bos_token: bool | None = None,
                   max_batch_tokens: int = DEFAULT_BATCH_TOKENS, on_batch: Callable[[int], None] | None = None,
                   file: str | os.PathLike | None = None) -> tuple[list[ExampleResult], int]:
    """Per-example log-likelihoods and predictions (acc and acc_norm) for a list of examples.

    ``model`` is a PyTorch model (scored by :class:`TorchScorer` with ``max_batch_tokens``) or any
    :class:`Scorer` (e.g. :class:`LlamaCppScorer`): requests and metrics are the same for every engine."""
    scorer = as_scorer(model, max_batch_tokens)
    enc = LmEvalTokenizer(tokenizer, add_bos_token, scorer.max_length)
    encoded, owners, truncated = encode_examples(enc, examples, file)
    lls, tokens = scorer.score(encoded, owners, on_batch=on_batch)
    results, k = [], 0
    for ex, cut in zip(examples, truncated):
        ll = lls[k:k + ex.num_choices]
        k += ex.num_choices
        norm = ll / np.asarray(ex.norm_lengths, dtype=np.float64)
        results.append(ExampleResult(ex.id, ex.label, tuple(float(v) for v in ll), int(np.argmax(ll)),
                                     int(np.argmax(norm)), cut, ex.golds, ex.multiple_target))
    return results, tokens


def evaluate_task(
    model,
    tokenizer,
    task: Task | TaskData | str,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    num_fewshot: int | None = None,
    add_bos_token: bool | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = True,
    split: str = "all",
) -> TaskResult:
    """Evaluate a model on a multiple-choice task: lm-eval's acc / acc_norm and their standard errors.

    ``task`` is a registered name, a :class:`Task`, or already-loaded :class:`TaskData`. ``limit`` takes a
    fixed seeded subset (the same ``limit`` and ``seed`` give the same examples; use it inside the search),
    ``None`` the full set. ``split`` takes the task's "search" or "report" part first (see
    :mod:`toolkit.tasks`: the search selects on its part, reports are measured on the other); "all" keeps
    ``task`` as it is (already-split :class:`TaskData` stays its part). ``TaskResult.split`` records it.
    ``model`` is a PyTorch model or a :class:`Scorer` (``TaskResult.engine`` records which engine scored).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if isinstance(task, TaskData):
        data = task
    else:
        if data_dir is None:
            from toolkit.fileio import data_dir as default_data_dir

            data_dir = default_data_dir(None)
        data = load_task(get_task(task, data_dir) if isinstance(task, str) else task, data_dir, num_fewshot)
    if split != "all":  # "all": the data as given (a part already taken stays that part)
        data = data.split(split)
    data = data.select(limit, seed)
    examples = data.examples
    scorer = as_scorer(model, max_batch_tokens)
    if progress:
        from toolkit.progress import progress_bar

        with progress_bar(transient=True) as bar:
            tid = bar.add_task(f"eval {data.task.name}", total=sum(e.num_choices for e in examples), info="")
            per, tokens = score_examples(scorer, tokenizer, examples, add_bos_token,
                                         on_batch=lambda n: bar.advance(tid, n), file=data.file)
    else:
        per, tokens = score_examples(scorer, tokenizer, examples, add_bos_token, file=data.file)
    acc = [r.score("acc") for r in per]
    acc_norm = [r.score("acc_norm") for r in per]
    mc2s = [r.score("mc2") for r in per] if all(r.golds for r in per) else None
    return TaskResult(
        task=data.task.name, n=len(per), acc=float(np.mean(acc)), acc_stderr=mean_stderr(acc),
        acc_norm=float(np.mean(acc_norm)), acc_norm_stderr=mean_stderr(acc_norm),
        mc2=None if mc2s is None else float(np.mean(mc2s)), mc2_stderr=None if mc2s is None else mean_stderr(mc2s),
        chance={m: data.chance(m) for m in METRICS if m != "mc2" or mc2s is not None},
        seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, metrics=data.task.metrics,
        higher_is_better=dict(data.task.higher_is_better), num_fewshot=data.num_fewshot, limit=limit, seed=seed,
        split=data.part, tokens_forward=tokens, truncated_examples=sum(r.truncated for r in per), per_example=tuple(per),
        engine=scorer.engine,
    )


# -- perplexity ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    tokens_scored: int
    tokens_total: int
    window: int
    stride: int
    seconds: float
    higher_is_better: dict[str, bool] = field(default_factory=lambda: {"perplexity": False})
    version: int = EVAL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "perplexity": self.perplexity, "nll_sum": self.nll_sum,
                "tokens_scored": self.tokens_scored, "tokens_total": self.tokens_total, "window": self.window,
                "stride": self.stride, "seconds": self.seconds, "higher_is_better": dict(self.higher_is_better)}


def _read_text(text_or_file: str | os.PathLike) -> str:
    if isinstance(text_or_file, os.PathLike) or (
        isinstance(text_or_file, str) and "\n" not in text_or_file and len(text_or_file) < 4096
        and os.path.isfile(text_or_file)
    ):
        path = Path(text_or_file)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read text file ({exc})") from None
    return str(text_or_file)


@torch.inference_mode()
def perplexity(
    model,
    tokenizer,
    text_or_file: str | os.PathLike,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> PerplexityResult:
    """Perplexity of a text (or a file: a ``Path``, or a ``str`` naming an existing file) in fixed windows.

    The text is tokenized once without special tokens (and cut to ``max_tokens``); windows of ``window``
    tokens start every ``stride`` tokens (default: ``window``, i.e. non-overlapping, the GPTQ/AWQ
    protocol where each window scores its ``window - 1`` predicted tokens). A token is scored at most
    once, by the first window that predicts it, with the earlier tokens of that window as its context
    (the Hugging Face sliding-window protocol when ``stride < window``); a window's first token is only
    context. Windows are batched, and the LM head runs only on the scored positions.
    """
    t0 = time.perf_counter()
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise UserError(f"perplexity: need window >= 2 and 1 <= stride <= window, got window={window} stride={stride}")
    text = _read_text(text_or_file)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids)
    if n < 2:
        raise UserError("perplexity: the text has fewer than 2 tokens")
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    spans = []  # (begin, end, first scored position in the text)
    scored_until = 1
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        first = max(scored_until, begin + 1)
        if end > first:
            spans.append((begin, end, first))
            scored_until = end
        if end == n:
            break
    ids_t = torch.tensor(ids)
    nll = 0.0
    scored = 0
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for s in spans:
        by_len.setdefault(s[1] - s[0], []).append(s)
    for length, group in by_len.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            x = torch.stack([ids_t[b:e - 1] for b, e, _ in chunk]).to(device)  # (B, length - 1): the last token is only a target
            h = decoder(input_ids=x, use_cache=False).last_hidden_state  # (B, length - 1, H)
            rows, tgt = [], []
            for j, (b, e, first) in enumerate(chunk):
                for t in range(first, e):  # text token t is predicted at window position t - 1 - b >= 0
                    rows.append(j * (length - 1) + (t - 1 - b))
                    tgt.append(ids[t])
            hidden = h.reshape(-1, h.shape[-1]).index_select(0, torch.tensor(rows, device=device))
            lp = _token_logprobs(head, hidden, torch.tensor(tgt, device=device))
            nll -= float(lp.sum())
            scored += len(tgt)
    return PerplexityResult(
        perplexity=math.exp(nll / scored), nll_sum=nll, tokens_scored=scored, tokens_total=n, window=window,
        stride=stride, seconds=time.perf_counter() - t0,
    )
