"""ONNX export with a KV cache, run and verified in onnxruntime's CPU provider.

Why not optimum's exporter: it is in optimum-onnx (optimum 2.3.0 has no ``optimum.exporters``), and
optimum-onnx 0.1.0, the latest release, requires ``transformers>=4.36,<4.58`` and ``optimum~=2.1.0``. This
project pins ``transformers>=5.14,<5.40`` (4.57 mis-reads the SmolLM2 GGUF tokenizer; gptqmodel 7.3.6 needs
>= 5.14; see pyproject.toml) and optimum 2.3.0 (GPTQ loading, :mod:`toolkit.export.gptq`), so optimum-onnx
cannot be installed beside them. Until a release of it accepts transformers 5, a thin wrapper exposes the
cache as flat tensors and the model is exported with ``torch.onnx.export(..., dynamo=True)`` (onnxscript),
in optimum's naming::

    inputs : input_ids (B, S), attention_mask (B, P+S), position_ids (B, S),
             past_key_values.{i}.key / .value (B, kv_i, P, head_dim)     for each layer i
    outputs: logits (B, S, vocab), present.{i}.key / .value (B, kv_i, P+S, head_dim)

Batch, sequence and past length are dynamic; ``P = 0`` (empty past tensors) is the prefill. Layers may
have different kv-head counts (heterogeneous sub-networks). :class:`OrtCausalLM` runs the graph in
onnxruntime (all graph optimisations on): teacher-forced logits through the KV cache (the parity check,
:mod:`toolkit.export.parity`) and timed cached decode steps.

:func:`export_onnx` leaves the caller's model as it was: the export needs fp32 on the CPU in eval mode
with eager attention, so a model in another dtype or on another device is exported from a copy, and the
attention setting and train/eval mode of the caller's model are restored afterwards.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from toolkit.errors import UserError

ONNX_FILE = "model.onnx"


@functools.cache
def is_onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def require_onnx() -> None:
    if not is_onnx_available():
        raise UserError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'llm-nas-toolkit[onnx]'")


def _kv_heads(model) -> list[int]:
    head_dim = model.model.layers[0].self_attn.head_dim
    return [layer.self_attn.k_proj.out_features // head_dim for layer in model.model.layers]


def _wrapper(model):
    import torch
    from transformers import DynamicCache

    from toolkit.models.compat import cache_kwargs

    class FlatCacheLM(torch.nn.Module):
        """(input_ids, attention_mask, position_ids, *flat past) -> (logits, *flat present)."""

        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.lm.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          **cache_kwargs(self.lm, cache), use_cache=True)
            present = []
            for i in range(len(past) // 2):
                present += [cache.layers[i].keys, cache.layers[i].values]
            return (out.logits, *present)

    return FlatCacheLM(model).eval()


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    kv = [f"{i}.{t}" for i in range(num_layers) for t in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{n}" for n in kv],
            ["logits"] + [f"present.{n}" for n in kv])


def _needs_copy(model) -> bool:
    """Whether exporting needs ``model`` converted (a floating tensor not fp32, or not on the CPU)."""
    import torch

    return any((t.is_floating_point() and t.dtype != torch.float32) or t.device.type != "cpu"
               for t in [*model.parameters(), *model.buffers()])


def export_onnx(model, out_dir: Path) -> dict:
    """Write ``model.onnx`` for ``model`` (fp32, CPU) into ``out_dir``; returns details for the manifest.

    The caller's ``model`` is not changed (dtype, device, train/eval mode, attention implementation)."""
    require_onnx()
    import copy

    import torch

    caller, was_training = model, model.training
    if _needs_copy(model):
        model = copy.deepcopy(model).float().cpu()
    model.eval()
    attn = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # the sdpa path's masks do not export cleanly everywhere
    try:
        n = model.config.num_hidden_layers
        head_dim = model.model.layers[0].self_attn.head_dim
        B, S, P = 2, 4, 3
        past = []
        for h in _kv_heads(model):
            past += [torch.zeros(B, h, P, head_dim), torch.zeros(B, h, P, head_dim)]
        ids = torch.randint(3, model.config.vocab_size, (B, S))
        mask = torch.ones(B, P + S, dtype=torch.long)
        pos = torch.arange(P, P + S).expand(B, -1)
        batch, seq, past_len, total = (torch.export.Dim(n_) for n_ in ("batch", "sequence", "past_sequence", "total_sequence"))
        dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
                   "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past)}
        names_in, names_out = io_names(n)
        t0 = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(_wrapper(model), (ids, mask, pos, *past), str(out_dir / ONNX_FILE), dynamo=True,
                              dynamic_shapes=dynamic, input_names=names_in, output_names=names_out, optimize=True,
                              verbose=False)
    finally:
        model.config._attn_implementation = attn
        caller.train(was_training)
    return {"file": ONNX_FILE, "export_seconds": round(time.perf_counter() - t0, 2),
            "kv_heads": _kv_heads(model), "head_dim": model.model.layers[0].self_attn.head_dim,
            "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}"}


class OrtCausalLM:
    """An exported graph with its KV cache, in onnxruntime."""

    def __init__(self, folder: Path, kv_heads: Sequence[int], head_dim: int, threads: int | None = None):
        require_onnx()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.path = Path(folder) / ONNX_FILE
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a corrupt or foreign graph is bad input, not a toolkit bug
            raise UserError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})") from None
        self.kv_heads = list(kv_heads)
        self.head_dim = int(head_dim)
        self.names_in, self.names_out = io_names(len(self.kv_heads))

    @classmethod
    def from_artifact(cls, folder: Path, threads: int | None = None) -> "OrtCausalLM":
        """Open an exported ONNX artifact (the cache layout is in its manifest)."""
        from toolkit.errors import ConfigError
        from toolkit.export.manifest import MANIFEST, Manifest

        d = Manifest.read(folder).details
        file = str(Path(folder) / MANIFEST)
        kv, hd = d.get("kv_heads"), d.get("head_dim")
        if not isinstance(kv, list) or not kv or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in kv):
            raise ConfigError("details.kv_heads", "expected a non-empty list of positive integers (one per layer)", file)
        if isinstance(hd, bool) or not isinstance(hd, int) or hd <= 0:
            raise ConfigError("details.head_dim", "expected a positive integer", file)
        return cls(folder, kv, hd, threads)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, h, 0, self.head_dim), np.float32) for h in self.kv_heads for _ in (0, 1)]

    def forward(self, input_ids: np.ndarray, past: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        B, S = input_ids.shape
        P = past[0].shape[2]
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": np.ones((B, P + S), np.int64),
                "position_ids": np.broadcast_to(np.arange(P, P + S, dtype=np.int64), (B, S)).copy()}
        feed.update(zip(self.names_in[3:], past))
        try:
            out = self.session.run(None, feed)
        except Exception as exc:  # e.g. a manifest whose cache layout (kv_heads, head_dim) is not the graph's
            raise UserError(f"{self.path}: onnxruntime cannot run it with the manifest's cache layout (kv_heads "
                            f"{self.kv_heads}, head_dim {self.head_dim}): {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]}") from None
        return out[0], out[1:]

    def teacher_forced_logits(self, sequence: Sequence[int], prompt_len: int) -> np.ndarray:
        """Logits at every position of ``sequence``, (T, vocab): the first ``prompt_len`` tokens in one
        prefill, then one cached decode step per remaining token (the path generation takes)."""
        ids = np.asarray([list(sequence)], dtype=np.int64)  # (1, T)
        logits, past = self.forward(ids[:, :prompt_len], self.empty_past(1))
        rows = [logits[0]]
        for t in range(prompt_len, ids.shape[1]):
            logits, past = self.forward(ids[:, t:t + 1], past)
            rows.append(logits[0])
        return np.concatenate(rows, 0)

    def decode_ms_per_token(self, prompt_tokens: int = 128, generate_tokens: int = 32, repeats: int = 5,
                            vocab: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Median ms per cached decode step on the workload (teacher-forced steps), and the spread."""
        from toolkit.measure import time_callable

        rng = np.random.default_rng(seed)
        ids = rng.integers(3, vocab, (1, prompt_tokens))
        steps = rng.integers(3, vocab, (1, generate_tokens))
        caches = []

        def setup():
            caches.append(self.forward(ids, self.empty_past(1))[1])

        def decode():
            past = caches.pop()
            for i in range(generate_tokens):
                _, past = self.forward(steps[:, i : i + 1], past)

        t = time_callable(decode, warmup=1, repeats=repeats, setup=setup)
        return t.median_s * 1e3 / generate_tokens, t.spread
