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
  ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else 2048);
* ``acc`` = argmax of the sums; ``acc_norm`` = argmax of sum / ``Example.norm_lengths`` (lm-eval's
  character length of the choice, see :mod:`toolkit.tasks`); ties go to the first choice (``np.argmax``);
  standard errors are lm-eval's ``mean_stderr`` (sample standard deviation / sqrt(n)).

**Faster than lm-eval** (which runs every ``context + choice`` as its own full sequence and computes the
LM head and a log-softmax over the whole vocabulary at every position):

1. *Shared prefix, computed once.* The requests of one example usually share a long token prefix (the
   context; for PIQA often words of the two solutions too; for WinoGrande the sentence before the blank).
   The longest common prefix of an example's inputs runs once; its KV cache is then indexed out over the
   choices (``Cache.batch_select_indices`` with repeated rows) and only the differing suffixes run,
   with ``position_ids`` continuing each example's prefix and an attention mask hiding the prefix padding.
2. *LM head only where it is needed.* The decoder (``model.get_decoder()``) returns hidden states; the LM
   head and log-softmax run only on the rows that predict a continuation token.
3. *Sorted, token-budgeted batches* (longest first, so padding is small), under ``torch.inference_mode``.

The result equals a plain full-sequence forward up to float rounding (tests check <= 1e-4 on tiny
models); ``benchmarks/evaluator.py`` checks the numbers against lm-eval itself.

Why hand-written: lm-eval is the reference, but it is a heavy dependency, ~3-5x slower for this workload
and (in the releases that pin ``huggingface_hub<1.0``) incompatible with this project's transformers 5.
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
from toolkit.tasks import Example, Task, TaskData, get_task, load_task

EVAL_VERSION = 1
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length


# -- tokenization, exactly as lm-eval's HFLM ---------------------------------------------------------
class LmEvalTokenizer:
    """Encodes (context, continuation) pairs the way lm-eval's ``HFLM`` does (see the module docstring)."""

    def __init__(self, tokenizer, add_bos_token: bool | None = None):
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
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

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context tokens, continuation tokens) for each pair, as ``LM.loglikelihood`` builds them."""
        moved = []
        for context, continuation in pairs:
            n_spaces = len(context) - len(context.rstrip())
            if context and n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            moved.append((context, continuation))
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
    """lm-eval's ``resolve_max_length`` for a text-only config: the first context length the config names."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(model.config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return _DEFAULT_MAX_LENGTH


# -- the scoring engine --------------------------------------------------------------------------------
@dataclass
class _Group:
    """Requests of one example that share a token prefix (``prefix`` = their longest common prefix)."""

    prefix: list[int]
    members: list[int]  # request indices
    suffix_len: int  # longest suffix after the prefix

    @property
    def cost(self) -> int:
        return len(self.prefix) + self.suffix_len


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
        groups.append(_Group(list(seqs[0][:p]), members, max(len(s) - p for s in seqs)))
    return groups


def _buckets(items: list, length, max_tokens: int, ratio: float = 0.8, fits=None) -> list[list]:
    """Longest first, batches of similar length: a batch is cut when its padded size would pass
    ``max_tokens``, when the next item is shorter than ``ratio`` x the batch's longest (padding <= 20 %),
    or when ``fits(batch + [item])`` says no."""
    out, cur = [], []
    for item in sorted(items, key=lambda it: -length(it)):
        if cur:
            longest = length(cur[0])
            if ((len(cur) + 1) * longest > max_tokens or length(item) < ratio * longest
                    or (fits is not None and not fits(cur + [item]))):
                out.append(cur)
                cur = []
        cur.append(item)
    if cur:
        out.append(cur)
    return out


def _superchunks(groups: list[_Group], max_prefix_tokens: int) -> list[list[_Group]]:
    """Groups by prefix length, longest first, cut so that one chunk's prefix KV cache stays bounded."""
    out, cur, total = [], [], 0
    for g in sorted(groups, key=lambda g: -len(g.prefix)):
        if cur and total + len(g.prefix) > max_prefix_tokens:
            out.append(cur)
            cur, total = [], 0
        cur.append(g)
        total += len(g.prefix)
    if cur:
        out.append(cur)
    return out


def _decoder_and_head(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise UserError(f"{type(model).__name__}: needs a Hugging Face causal LM (get_decoder() and an LM head)")
    return decoder, head


def _token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 256) -> torch.Tensor:
    """log P(target | hidden) per row: the LM head and a log-softmax on these rows only. (N,)

    The log-softmax runs as lm-eval's does (``F.log_softmax`` in the logits' dtype), upcast to float32 only
    for half-precision models. In float32, a 49k-way softmax carries ~1e-5 of summation rounding per token,
    and a different reduction (``logsumexp``) shifts sums over 200 tokens by ~2e-3: same function, same code.
    """
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
    max_batch_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Sum of continuation log-probabilities for (context tokens, continuation tokens) requests.

    ``owners[r]`` says which example request ``r`` belongs to: requests of one example share their common
    prefix (pass ``None`` to treat each request alone). Returns (log-likelihoods (R,), tokens run).

    Work goes in chunks of groups (bounded prefix KV memory): the chunk's prefixes run in batches of
    similar length (their KV caches kept), then its suffixes in batches of similar length, each attending
    to its rows of those caches. Padding stays under ~20 % in both passes even when the choices of one
    example differ a lot in length (PIQA). ``max_batch_tokens`` bounds the padded tokens of one forward.
    """
    from transformers import DynamicCache

    from toolkit.models.compat import cache_kwargs, output_cache

    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    max_len = model_max_length(model)
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
    owners = list(range(len(requests))) if owners is None else list(owners)
    groups = _build_groups(inputs, owners)
    loglik = torch.zeros(len(requests), dtype=torch.float64)
    tokens_run = 0

    def score_rows(hidden: torch.Tensor, index: list[int], tgt: list[int], seg: list[int]) -> None:
        if index:
            lp = _token_logprobs(head, hidden.index_select(0, torch.tensor(index, device=device)),
                                 torch.tensor(tgt, device=device))
            loglik.index_add_(0, torch.tensor(seg), lp.cpu())

    for chunk in _superchunks(groups, 2 * max_batch_tokens):
        # 1. prefixes, in batches of similar length; keep each batch's KV cache and padding mask.
        kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per prefix batch, per layer: (G_b, kvh, P_b, D)
        home: dict[int, tuple[int, int]] = {}  # group index in chunk -> (prefix batch, row)
        rows = []  # (group index in chunk, request, suffix length)
        for batch in _buckets(list(range(len(chunk))), lambda i: len(chunk[i].prefix), max_batch_tokens):
            P = len(chunk[batch[0]].prefix)
            ids = torch.zeros((len(batch), P), dtype=torch.long)
            mask = torch.zeros((len(batch), P), dtype=torch.long)
            index, tgt, seg = [], [], []
            n_rows = len(rows)
            for j, i in enumerate(batch):
                g = chunk[i]
                p = len(g.prefix)
                ids[j, :p] = torch.tensor(g.prefix)
                mask[j, :p] = 1
                home[i] = (len(kv), j)
                for r in g.members:
                    if len(inputs[r]) > p:
                        rows.append((i, r, len(inputs[r]) - p))
                    for t, pos_x in zip(targets[r], range(starts[r], p)):  # targets predicted inside the prefix
                        index.append(j * P + pos_x)
                        tgt.append(t)
                        seg.append(r)
            tokens_run += int(mask.sum())
            need_cache = len(rows) > n_rows  # some request of this batch goes on past its prefix
            out = decoder(input_ids=ids.to(device), attention_mask=None if bool(mask.all()) else mask.to(device),
                          use_cache=need_cache)
            score_rows(out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1]), index, tgt, seg)
            kv.append([(layer.keys, layer.values) for layer in output_cache(out).layers] if need_cache else [])
            del out
        # 2. suffixes, in batches of similar length, each attending to its rows of the prefix caches.
        def kv_fits(batch) -> bool:
            p_max = max(len(chunk[i].prefix) for i, _, _ in batch)
            return len(batch) * (p_max + batch[0][2]) <= 2 * max_batch_tokens

        for batch in _buckets(rows, lambda row: row[2], max_batch_tokens, fits=kv_fits):
            batch.sort(key=lambda row: home[row[0]])  # rows of one prefix batch together
            R, S = len(batch), max(n for _, _, n in batch)
            p_max = max(len(chunk[i].prefix) for i, _, _ in batch)
            sids = torch.zeros((R, S), dtype=torch.long)
            pos = torch.zeros((R, S), dtype=torch.long)
            mask = torch.ones((R, p_max + S), dtype=torch.long)
            index, tgt, seg = [], [], []
            for j, (i, r, n) in enumerate(batch):
                p = len(chunk[i].prefix)
                sids[j, :n] = torch.tensor(inputs[r][p:])
                pos[j] = p + torch.arange(S)
                mask[j, p:p_max] = 0
                for t, pos_x in zip(targets[r], range(starts[r], len(inputs[r]))):
                    if pos_x >= p:
                        index.append(j * S + pos_x - p)
                        tgt.append(t)
                        seg.append(r)
                tokens_run += n
            layers = []
            for li in range(len(kv[home[batch[0][0]][0]])):
                ks, vs = [], []
                for b in dict.fromkeys(home[i][0] for i, _, _ in batch):
                    sel = torch.tensor([home[i][1] for i, _, _ in batch if home[i][0] == b], device=device)
                    k, v = kv[b][li]
                    k, v = k.index_select(0, sel), v.index_select(0, sel)
                    if k.shape[2] >= p_max:
                        k, v = k[:, :, :p_max], v[:, :, :p_max]
                    else:  # a shorter prefix batch: pad with masked zeros
                        pad = (0, 0, 0, p_max - k.shape[2])
                        k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
                    ks.append(k)
                    vs.append(v)
                layers.append((torch.cat(ks) if len(ks) > 1 else ks[0], torch.cat(vs) if len(vs) > 1 else vs[0]))
            cache = DynamicCache(ddp_cache_data=layers, config=model.config)
            h = decoder(input_ids=sids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                        **cache_kwargs(decoder, cache), use_cache=True).last_hidden_state  # (R, S, H)
            del cache, layers
            score_rows(h.reshape(-1, h.shape[-1]), index, tgt, seg)
        del kv
        if on_batch is not None:
            on_batch(sum(len(g.members) for g in chunk))
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


# -- tasks -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleResult:
    id: str
    label: int
    loglikelihoods: tuple[float, ...]
    pred: int
    pred_norm: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "loglikelihoods": list(self.loglikelihoods),
                "pred": self.pred, "pred_norm": self.pred_norm}


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
    tokens_forward: int = 0  # tokens run through the decoder (shared prefixes once)
    cpu_seconds: float = 0.0  # process CPU time (all threads): the work, whatever else shares the cores
    per_example: tuple[ExampleResult, ...] = field(default=(), repr=False)
    version: int = EVAL_VERSION

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("TaskResult: n must be positive")
        for name in ("acc", "acc_norm"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"TaskResult: {name} must be in [0, 1], got {v}")

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        d = {
            "version": self.version, "task": self.task, "n": self.n, "num_fewshot": self.num_fewshot,
            "limit": self.limit, "seed": self.seed, "acc": self.acc, "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm, "acc_norm_stderr": self.acc_norm_stderr, "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds, "tokens_forward": self.tokens_forward, "metrics": list(self.metrics),
            "higher_is_better": dict(self.higher_is_better),
        }
        if per_example:
            d["per_example"] = [e.to_dict() for e in self.per_example]
        return d


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n) (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def score_examples(model, tokenizer, examples: Sequence[Example], add_bos_token: bool | None = None,
                   max_batch_tokens: int = 4096, on_batch: Callable[[int], None] | None = None
                   ) -> tuple[list[ExampleResult], int]:
    """Per-example log-likelihoods and predictions (acc and acc_norm) for a list of examples."""
    enc = LmEvalTokenizer(tokenizer, add_bos_token)
    pairs, owners = [], []
    for e, ex in enumerate(examples):
        pairs.extend(ex.requests)
        owners.extend([e] * ex.num_choices)
    encoded = enc.encode_pairs(pairs)
    for (ctx, cont), o in zip(encoded, owners):
        if not cont:
            raise UserError(f"example {examples[o].id} (line {examples[o].line}): a choice encodes to no tokens")
    lls, tokens = score_token_requests(model, encoded, owners, max_batch_tokens=max_batch_tokens, on_batch=on_batch)
    results, k = [], 0
    for ex in examples:
        ll = lls[k:k + ex.num_choices]
        k += ex.num_choices
        norm = ll / np.asarray(ex.norm_lengths, dtype=np.float64)
        results.append(ExampleResult(ex.id, ex.label, tuple(float(v) for v in ll), int(np.argmax(ll)), int(np.argmax(norm))))
    return results, tokens


def evaluate_task(
    model,
    tokenizer,
    task: Task | TaskData | str,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    num_fewshot: int = 0,
    add_bos_token: bool | None = None,
    max_batch_tokens: int = 4096,
    progress: bool = True,
) -> TaskResult:
    """Evaluate a model on a multiple-choice task: lm-eval's acc / acc_norm and their standard errors.

    ``task`` is a registered name, a :class:`Task`, or already-loaded :class:`TaskData`. ``limit`` takes a
    fixed seeded subset (the same ``limit`` and ``seed`` give the same examples; use it inside the search),
    ``None`` the full set (for reports).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if isinstance(task, TaskData):
        data = task
    else:
        if data_dir is None:
            from toolkit.cli.common import data_dir as default_data_dir

            data_dir = default_data_dir(None)
        data = load_task(get_task(task) if isinstance(task, str) else task, data_dir, num_fewshot)
    data = data.select(limit, seed)
    examples = data.examples
    if progress:
        from toolkit.progress import progress_bar

        with progress_bar(transient=True) as bar:
            tid = bar.add_task(f"eval {data.task.name}", total=sum(e.num_choices for e in examples), info="")
            per, tokens = score_examples(model, tokenizer, examples, add_bos_token, max_batch_tokens,
                                         on_batch=lambda n: bar.advance(tid, n))
    else:
        per, tokens = score_examples(model, tokenizer, examples, add_bos_token, max_batch_tokens)
    acc = [float(r.pred == r.label) for r in per]
    acc_norm = [float(r.pred_norm == r.label) for r in per]
    return TaskResult(
        task=data.task.name, n=len(per), acc=float(np.mean(acc)), acc_stderr=mean_stderr(acc),
        acc_norm=float(np.mean(acc_norm)), acc_norm_stderr=mean_stderr(acc_norm),
        seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, metrics=data.task.metrics,
        higher_is_better=dict(data.task.higher_is_better), num_fewshot=data.num_fewshot, limit=limit, seed=seed,
        tokens_forward=tokens, per_example=tuple(per),
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
