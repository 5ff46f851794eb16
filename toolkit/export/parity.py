"""Teacher-forced parity: does an artifact compute the logits of the PyTorch model it was exported from?

One check, used by every export format and by ``toolkit verify``:

1. The *reference* is made once, in PyTorch: a prompt, PyTorch's greedy continuation of it
   (:data:`CONTINUATION_TOKENS` tokens), and PyTorch's logits at every position of that whole sequence,
   of which the :data:`TOP_K` largest are kept (ids and values) so the manifest stays small (about 600
   numbers).
2. The artifact's runtime is fed the *same* token sequence (teacher forcing: it never picks its own next
   token) and returns its logits at every position.
3. It passes when, at every position, its logits at the reference's top-k ids are within
   :data:`TOLERANCE` of PyTorch's; its own argmax (over the whole vocabulary) is one of the reference's
   top-k ids, its own max logit is at most PyTorch's top-1 logit plus :data:`TOLERANCE`, and its logit at
   every id outside the top-k is at most PyTorch's k-th logit plus :data:`TOLERANCE` (PyTorch scored those
   ids no higher than that), so no token whose logit the reference does not keep can score too high
   anywhere, near-ties included; and its argmax is PyTorch's top-1 at every position where PyTorch's
   top-1 vs top-2 margin leaves no room for a tie.

Why not compare free-running greedy generation: two runtimes whose logits agree to 1e-4 still pick
different tokens at the first near-tie (a margin below their rounding difference), after which they
decode different sequences and everything after looks like a mismatch. That made the ONNX export fail on
AVX-512 hosts with a max logit difference of 7.75e-5. Teacher forcing keeps both on the same sequence, so
a near-tie costs one position, and the margin rule does not count it at all.

The margin rule: a position counts as a greedy decision only when PyTorch's margin exceeds
``2 * tolerance``: with every logit within ``tolerance``, the two leading logits can close a gap of up to
twice that, so below it a different argmax is consistent with a passing logit comparison. The top-k rule
holds everywhere: a correct artifact's argmax can fall outside PyTorch's top-k only if the k+1 leading
logits all lie within ``2 * tolerance`` of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toolkit.errors import ConfigError, UserError

TOLERANCE = 1e-3  # max |logit difference| at any compared position and id
CONTINUATION_TOKENS = 32
TOP_K = 8
REFERENCE_VERSION = 2  # 1 was the free-running (logits_last + greedy_ids) reference
REFERENCE_PROMPT = "The capital of France is"  # the prompt of the reference a manifest records
PARITY_PROMPTS = (REFERENCE_PROMPT, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
                  "Question: Which gas do plants absorb from the air?\nAnswer:")  # checked at export time


class ParityError(UserError):
    """An artifact's outputs disagree with its reference: one line, exit code 2."""


@dataclass(frozen=True)
class Reference:
    """PyTorch's outputs on one token sequence (prompt + greedy continuation), top-k per position."""

    prompt: str
    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    topk_ids: tuple[tuple[int, ...], ...]  # (T, k): PyTorch's k highest-scoring ids at each position
    topk_logits: tuple[tuple[float, ...], ...]  # (T, k): their logits, descending
    version: int = REFERENCE_VERSION

    def __post_init__(self) -> None:
        T = len(self.prompt_ids) + len(self.continuation_ids)
        if not self.prompt_ids:
            raise ConfigError("reference.prompt_ids", "empty")
        if len(self.topk_ids) != T or len(self.topk_logits) != T:
            raise ConfigError("reference.topk_ids", f"need one row per position of the sequence ({T}), got "
                              f"{len(self.topk_ids)} ids and {len(self.topk_logits)} logits rows")
        for t, (ids, vals) in enumerate(zip(self.topk_ids, self.topk_logits)):
            if len(ids) < 2 or len(ids) != len(vals):
                raise ConfigError(f"reference.topk_ids[{t}]", "need at least 2 ids and one logit per id")
            if any(a < b for a, b in zip(vals, vals[1:])):
                raise ConfigError(f"reference.topk_logits[{t}]", "not in descending order")

    @property
    def sequence(self) -> list[int]:
        return [*self.prompt_ids, *self.continuation_ids]

    @property
    def margins(self) -> np.ndarray:
        """PyTorch's top-1 minus top-2 logit at each position, (T,)."""
        v = np.asarray(self.topk_logits, dtype=np.float64)
        return v[:, 0] - v[:, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "method": "teacher-forced", "prompt": self.prompt,
                "prompt_ids": list(self.prompt_ids), "continuation_ids": list(self.continuation_ids),
                "top_k": len(self.topk_ids[0]), "topk_ids": [list(r) for r in self.topk_ids],
                "topk_logits": [list(r) for r in self.topk_logits]}

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None) -> "Reference":
        """Validate a manifest's ``reference`` (every wrong type is a ConfigError naming the field)."""
        try:
            if not isinstance(d, Mapping):
                raise ConfigError("reference", f"must be an object, got {type(d).__name__}")
            if d.get("version") != REFERENCE_VERSION:
                raise ConfigError("reference.version", f"unsupported reference version {d.get('version')!r} (this "
                                  f"toolkit checks version {REFERENCE_VERSION}, teacher-forced); re-export the artifact")
            prompt = d.get("prompt")
            if not isinstance(prompt, str):
                raise ConfigError("reference.prompt", "must be a string")
            return cls(prompt=prompt, prompt_ids=_ints(d, "prompt_ids"), continuation_ids=_ints(d, "continuation_ids"),
                       topk_ids=_rows(d, "topk_ids", _is_int, "integers"),
                       topk_logits=_rows(d, "topk_logits", _is_number, "numbers"))
        except ConfigError as exc:
            raise exc.with_file(file) from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _ints(d: Mapping[str, Any], key: str) -> tuple[int, ...]:
    v = d.get(key)
    if not isinstance(v, list) or not all(_is_int(x) for x in v):
        raise ConfigError(f"reference.{key}", "must be a list of token ids (non-negative integers)")
    return tuple(v)


def _rows(d: Mapping[str, Any], key: str, ok: Callable[[Any], bool], what: str) -> tuple[tuple, ...]:
    v = d.get(key)
    if not isinstance(v, list):
        raise ConfigError(f"reference.{key}", f"must be a list of lists of {what}")
    for t, row in enumerate(v):
        if not isinstance(row, list) or not all(ok(x) for x in row):
            raise ConfigError(f"reference.{key}[{t}]", f"must be a list of {what}")
    return tuple(tuple(row) for row in v)


@dataclass(frozen=True)
class ParityResult:
    positions: int
    max_abs_logit_diff: float
    worst_position: int
    near_ties: int  # positions whose margin is too small to count as a greedy decision
    greedy_mismatches: tuple[int, ...] = field(default=())  # positions where the argmax differs despite a clear margin
    tolerance: float = TOLERANCE
    # positions where the artifact's argmax is not among the reference's top-k ids, its max logit exceeds the
    # reference's top-1, or a logit outside the top-k exceeds the reference's k-th, by more than the tolerance
    # (checked at every position, near-ties included)
    off_topk: tuple[int, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance and not self.greedy_mismatches and not self.off_topk

    def to_dict(self) -> dict[str, Any]:
        return {"method": "teacher-forced", "positions": self.positions, "tolerance": self.tolerance,
                "max_abs_logit_diff": self.max_abs_logit_diff, "worst_position": self.worst_position,
                "near_ties": self.near_ties, "greedy_mismatches": list(self.greedy_mismatches),
                "off_topk": list(self.off_topk), "ok": self.ok}

    def describe(self) -> str:
        out = f"max |logit diff| {self.max_abs_logit_diff:.2e} (position {self.worst_position}, tolerance {self.tolerance:g})"
        if self.greedy_mismatches:
            out += f", argmax differs at {len(self.greedy_mismatches)} position(s) with a clear margin " \
                   f"(first: {self.greedy_mismatches[0]})"
        if self.off_topk:
            out += f", a token outside the reference's top-k wins or scores above the reference by more than the " \
                   f"tolerance at {len(self.off_topk)} position(s) (first: {self.off_topk[0]})"
        return out


def compare(ref: Reference, logits: np.ndarray, tolerance: float = TOLERANCE) -> ParityResult:
    """Compare an artifact's logits ``(T, vocab)`` on ``ref.sequence`` with the reference."""
    logits = np.asarray(logits)
    T = len(ref.sequence)
    if logits.ndim != 2 or logits.shape[0] != T:
        raise ParityError(f"parity: the artifact returned logits of shape {tuple(logits.shape)} for a "
                          f"{T}-token sequence (expected ({T}, vocab))")
    ids = np.asarray(ref.topk_ids, dtype=np.int64)  # (T, k)
    if ids.max() >= logits.shape[1]:
        raise ParityError(f"parity: the reference names token id {int(ids.max())}, the artifact's vocabulary "
                          f"has {logits.shape[1]}")
    full = logits.astype(np.float64)
    vals = np.asarray(ref.topk_logits, dtype=np.float64)  # (T, k)
    got = np.take_along_axis(full, ids, axis=1)  # (T, k)
    diff = np.abs(got - vals).max(axis=1)  # (T,)
    clear = ref.margins > 2 * tolerance
    argmax = full.argmax(axis=1)
    mismatches = tuple(int(t) for t in np.flatnonzero(clear & (argmax != ids[:, 0])))
    # Every position, near-ties too: the artifact's winner must be a token the reference kept, its best logit
    # no higher than PyTorch's best + tolerance, and an id the reference did not keep (PyTorch scored it at
    # most the k-th logit) no higher than the k-th + tolerance: this bounds every logit, not only the winner's.
    in_topk = (ids == argmax[:, None]).any(axis=1)
    too_high = full.max(axis=1) > vals[:, 0] + tolerance
    rest = full.copy()
    np.put_along_axis(rest, ids, -np.inf, axis=1)
    rest_too_high = rest.max(axis=1) > vals[:, -1] + tolerance
    off = tuple(int(t) for t in np.flatnonzero(~in_topk | too_high | rest_too_high | np.isnan(full).any(axis=1)))
    worst = int(diff.argmax())
    return ParityResult(positions=T, max_abs_logit_diff=float(diff[worst]), worst_position=worst,
                        near_ties=int((~clear).sum()), greedy_mismatches=mismatches, tolerance=tolerance,
                        off_topk=off)


# -- runtimes -------------------------------------------------------------------------------------
def torch_logits(model, sequence: Sequence[int]) -> np.ndarray:
    """A PyTorch causal LM's logits at every position of ``sequence`` (one forward, no cache), (T, vocab)."""
    import torch

    ids = torch.tensor([list(sequence)], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float().cpu().numpy()


def make_reference(model, tokenizer, prompt: str, tokens: int = CONTINUATION_TOKENS, top_k: int = TOP_K) -> Reference:
    """PyTorch's greedy continuation of ``prompt`` and its top-k logits at every position of the result."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    prompt_ids = ids[0].tolist()
    cont = out[0, ids.shape[1]:].tolist()
    logits = torch.from_numpy(torch_logits(model, prompt_ids + cont))
    vals, top = logits.topk(top_k, dim=-1)  # (T, k), descending
    return Reference(prompt=prompt, prompt_ids=tuple(prompt_ids), continuation_ids=tuple(cont),
                     topk_ids=tuple(tuple(r) for r in top.tolist()),
                     topk_logits=tuple(tuple(round(float(x), 6) for x in r) for r in vals.tolist()))


def check_tokenizer(tokenizer, ref: Reference, what: str) -> None:
    """The artifact's tokenizer must turn the reference prompt into the reference's ids."""
    ids = list(tokenizer(ref.prompt)["input_ids"])
    if ids != list(ref.prompt_ids):
        raise UserError(f"{what}: tokenizer: encodes the reference prompt {ref.prompt!r} differently from the "
                        "reference")


def check(ref: Reference, logits: np.ndarray, what: str, tolerance: float = TOLERANCE) -> ParityResult:
    """:func:`compare`, raising :class:`ParityError` (one line naming ``what``) when it fails."""
    res = compare(ref, logits, tolerance)
    if not res.ok:
        raise ParityError(f"{what}: parity: outputs differ from the reference on {ref.prompt!r}: {res.describe()}")
    return res


def merge(results: Sequence[ParityResult]) -> dict[str, Any]:
    """One manifest ``parity`` record for several prompts."""
    worst = max(results, key=lambda r: r.max_abs_logit_diff)
    return {"method": "teacher-forced", "prompts": len(results), "positions": sum(r.positions for r in results),
            "continuation_tokens": CONTINUATION_TOKENS, "top_k": TOP_K, "tolerance": worst.tolerance,
            "max_abs_logit_diff": worst.max_abs_logit_diff, "near_ties": sum(r.near_ties for r in results),
            "greedy_mismatches": sum(len(r.greedy_mismatches) for r in results),
            "off_topk": sum(len(r.off_topk) for r in results),
            "ok": all(r.ok for r in results)}
