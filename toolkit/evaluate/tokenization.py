"""lm-eval's tokenization: (context, continuation) pairs become the token requests lm-eval's ``HFLM`` scores.

Each choice is scored as the sum of ``log P(continuation | context)`` over the continuation's tokens,
tokenized exactly as lm-eval's ``HFLM`` does (``lm_eval/api/model.py`` ``loglikelihood`` /
``_encode_pair`` and ``models/huggingface.py`` ``tok_encode``):

* trailing spaces of the context move to the front of the continuation;
* ``whole = encode(context + continuation)``, ``ctx = encode(context)``, ``cont = whole[len(ctx):]``; the
  model reads ``ctx + cont`` (not ``whole``: the two differ when a token straddles the boundary);
* ``encode`` uses the tokenizer's default special tokens (``add_bos_token=None`` in lm-eval), except that
  a string already starting with the prefix token's text is encoded without them. SmolLM2 adds no BOS;
* an empty context (WinoGrande's full-sentence fallback) becomes the *prefix token*: BOS if the
  tokenizer has one, else EOS; if the continuation already starts with it, its first token is the context;
* the input is ``(ctx + cont)[-(max_length + 1):][:-1]`` (:func:`lm_eval_inputs`) with lm-eval's
  ``max_length`` (:func:`model_max_length`: the config's ``n_positions`` / ``max_position_embeddings`` /
  ``n_ctx``, else 2048): an over-long context loses its *left* end and the continuation is kept whole.
  ``ExampleResult.truncated`` / ``TaskResult.truncated_examples`` record it and ``toolkit eval`` /
  ``search`` say so in one warning line (:func:`truncation_warning`);
* a continuation longer than ``max_length`` tokens is an error, as in lm-eval (``assert
  len(continuation_enc) <= self.max_length`` in ``HFLM._loglikelihood_tokens``): cutting it would score
  a different answer. :func:`check_task_lengths` finds one (file and line) before the model loads.

**Bounded tokenization.** lm-eval tokenizes an over-long context whole and then keeps its last tokens.
A multi-megabyte context (one 2.6 MB line) would cost seconds to minutes of tokenizer time per choice, so
a context is first cut to its last few thousand characters that still encode to more than ``max_length``
tokens plus a 64-token margin (the cut starts a whitespace run, so pre-tokenization after it is
unchanged): the tokens kept are lm-eval's, the work is a small multiple of ``max_length``.

The tokenizer itself comes from the model folder (:func:`peek_tokenizer`, without loading the weights)
or, for a GGUF file, from its metadata (:func:`gguf_tokenizer`, the tokenizer the PyTorch path builds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from toolkit.errors import UserError
from toolkit.tasks import Example, TaskData

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length
_CUT_MARGIN_TOKENS = 64  # tokens kept beyond max_length when an over-long context is cut before encoding


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
    return DEFAULT_MAX_LENGTH


def lm_eval_inputs(requests: Sequence[tuple[list[int], list[int]]], max_len: int
                   ) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(input tokens, position in the input that predicts the continuation's first token, continuation)
    per request: ``(ctx + cont)[-(max_len + 1):][:-1]``, lm-eval's left truncation. Every engine scores these."""
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
        where = ex.where(file)
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


def gguf_tokenizer(path: str | os.PathLike):
    """The HF tokenizer transformers builds from a GGUF file, the one :func:`toolkit.models.load_model`
    gives the PyTorch path, without dequantizing the weights.

    It is read from the file's dequantized cache folder when that exists (exactly the PyTorch path's
    tokenizer), else built from the GGUF metadata by transformers (``gguf_file=``, which takes seconds for
    a 49k-token vocabulary) and saved, as loading saves it, to a tokenizer-only cache keyed by the file's
    sha256, so later reads skip that.
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
