"""Few-shot examples drawn as lm-evaluation-harness 0.4.13 draws them (``lm_eval/api/samplers.py``).

lm-eval builds one sampler per task, seeded once with ``fewshot_random_seed`` (1234 unless set), and asks
it for shots document after document, in the evaluated split's order, for the documents it evaluates.
:func:`sample_shots` draws them for the whole split, so a document's prompt is the same in every subset the
toolkit takes later (a seeded ``--limit`` subset, the search and report parts): the prompts equal
lm-eval's on the whole split and under lm-eval's ``--limit N`` (its first ``N`` documents). A subset picked
with lm-eval's ``samples`` would draw differently there, since its draws skip the documents left out.

* ``default``: ``Random(seed).sample(pool, k)``; when the pool is the evaluated split itself, it draws
  ``k + 1`` and drops the document being evaluated (every copy equal to it), then keeps ``k``; if copies
  left fewer than ``k``, it draws ``k`` again from the pool without them (0.4.13's resample).
* ``first_n``: the first ``k`` rows of the pool (without the document, when the pool is its split).
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from toolkit.errors import UserError

T = TypeVar("T")


def sample_shots(pool: Sequence[T], docs: Sequence[T], k: int, seed: int, sampler: str = "default",
                 exclude_self: bool = False, where: str = "few-shot rows") -> list[list[T]]:
    """The ``k`` shots of every document of ``docs``, in order (see the module doc)."""
    need = k + 1 if exclude_self and sampler == "default" else k
    if len(pool) < need:
        raise UserError(f"{where}: {len(pool)} rows cannot give {k} few-shot examples"
                        + (" (plus the row being evaluated, which is left out)" if exclude_self else ""))
    rnd = random.Random(seed)
    pool = list(pool)
    out = []
    for doc in docs:
        if sampler == "first_n":
            rest = [x for x in pool if x != doc] if exclude_self else pool
            shots = rest[:k]
        elif not exclude_self:
            shots = rnd.sample(pool, k)
        else:
            shots = [x for x in rnd.sample(pool, k + 1) if x != doc][:k]
            if len(shots) < k:
                shots = rnd.sample([x for x in pool if x != doc], k)
        if len(shots) < k:
            raise UserError(f"{where}: fewer than {k} rows differ from a row being evaluated")
        out.append(shots)
    return out
