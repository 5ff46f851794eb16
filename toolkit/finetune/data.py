"""Training data: documents packed into fixed-length windows, and the window order of every step."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def token_windows(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Tokenize documents (each followed by EOS), concatenate, cut into (N, seq_len) windows."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False).input_ids)
        ids.append(eos)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def batch_indices(num_windows: int, seed: int, first_sample: int, count: int) -> np.ndarray:
    """Window indices of training samples ``first_sample .. first_sample+count-1``.

    Each epoch is a permutation drawn from (seed, epoch): a pure function, so nothing to checkpoint.
    """
    out = np.empty(count, dtype=np.int64)
    for j in range(count):
        s = first_sample + j
        epoch, pos = divmod(s, num_windows)
        out[j] = np.random.default_rng([seed, epoch]).permutation(num_windows)[pos]
    return out
