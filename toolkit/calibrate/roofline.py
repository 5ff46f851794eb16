"""The roofline cost model: per-target feature vectors of a sub-network on a device and workload.

For a sub-network on a device profile's workload (batch ``B``, prompt ``T``, ``N`` generated tokens),
three targets are predicted:

* ``prefill_ms``: forward pass over the prompt with the KV cache on, logits for the last token only;
* ``decode_ms_per_token`` (reported as ``decode_tokens_per_s``): one cached generation step, averaged
  over the ``N`` steps;
* ``peak_mem_bytes``: weights + KV cache + activations.

**Design.** Each target is linear in a handful of *per-layer additive* features, each a roofline time
(FLOPs / peak FLOP/s for prefill, bytes read / bandwidth for decode) or byte count summed over the kept
layers, split by part so heterogeneous layers predict well::

    prefill_ms      = c0 + c1*depth + c2*sum_i attn_flops_i/peak + c3*sum_i mlp_flops_i/peak
    decode_ms       = c0 + c1*depth + c2*sum_i attn_bytes_i/bw   + c3*sum_i mlp_bytes_i/bw
    peak_mem_bytes  = c0 + c1*weight_bytes + c2*kv_cache_bytes + c3*activation_bytes

``c0`` holds the embedding/LM-head cost and fixed overheads, ``c1`` the per-layer framework overhead
(large on CPUs for small models), ``c2``, ``c3`` are inverse efficiencies. With no calibration the
prior is the pure roofline (:func:`roofline_prior`: ``c2 = c3 = 1``, LM-head roofline in ``c0``);
calibration fits the coefficients (:mod:`toolkit.calibrate.predictor`). Four coefficients per target
is why ~10-20 samples suffice (HELP-like sample counts), where one-hot regressors (DyNAS-T) need hundreds.

**Engine.** The features follow the profile's ``runtime.engine`` (:class:`Hardware`): decode reads
each weight at the engine's bytes per weight (torch: the runtime dtype; onnxruntime: fp32; llama.cpp:
the GGUF type's, e.g. 34/32 bytes for q8_0) and the KV cache at the engine's cache type (llama.cpp: f16).
The per-layer overhead ``c1`` is whatever the engine's calibration measures (large in PyTorch eager,
small in llama.cpp).

Why hand-written: nn-Meter / HELP predict CNN kernels or need meta-training; the transformer cost model
here is a few lines of algebra and NNLS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from toolkit import schema
from toolkit.engines import ENGINES as _ENGINE_REGISTRY
from toolkit.errors import ConfigError
from toolkit.profiles.schema import Workload  # the deployment workload: the profile's record, the one definition
from toolkit.schema import Invalid, Record, checked
from toolkit.space import ParentShape, SubnetConfig

TARGETS = ("prefill_ms", "decode_ms_per_token", "peak_mem_bytes")
FEATURE_NAMES = {
    "prefill_ms": ("const", "depth", "attn_roofline_ms", "mlp_roofline_ms"),
    "decode_ms_per_token": ("const", "depth", "attn_roofline_ms", "mlp_roofline_ms"),
    "peak_mem_bytes": ("const", "weight_bytes", "kv_cache_bytes", "activation_bytes"),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


ENGINES = tuple(_ENGINE_REGISTRY)  # torch, onnxruntime, llama.cpp
LLAMACPP_KV_BYTES = 2  # llama.cpp's default KV cache type is f16 (what toolkit.engines.llamacpp times)


def _gguf_bytes_per_weight(gguf_type: str) -> float:
    from toolkit.engines.llamacpp import GGUF_TYPES  # numpy/ctypes only; llama_cpp is not imported

    return GGUF_TYPES[gguf_type].bytes_per_weight


def _gguf_type_names() -> tuple[str, ...]:
    from toolkit.engines.llamacpp import GGUF_TYPES

    return tuple(GGUF_TYPES)


def _positive_number(v: Any) -> float:
    """A finite number > 0, written as a number (a JSON string "2e11" is refused: this file is written by
    the toolkit, so a string there means it was edited by hand)."""
    return schema.positive(schema.real(v))


def _gguf_type(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise Invalid(f"expected a GGUF type name or null, got {v!r}")
    return v


@dataclass(frozen=True)
class Hardware(Record):
    """The device figures the roofline needs (taken from a DeviceProfile), and how the engine stores data.

    The bytes the decode roofline reads follow the engine: torch reads its weights, KV cache and
    activations at the runtime dtype; onnxruntime runs the fp32 ONNX export (4 bytes each); llama.cpp
    reads weights at the GGUF type's nominal bytes per weight
    (:data:`toolkit.engines.llamacpp.GGUF_TYPES`), keeps an f16 KV cache and f32 activations.
    """

    _SECTION: ClassVar[str] = "hardware"
    peak_flops: float = checked(_positive_number)  # FLOP/s at the runtime dtype
    bandwidth_bytes_per_s: float = checked(_positive_number)
    dtype: str = checked(schema.choice(*DTYPE_BYTES), "float32")
    engine: str = checked(schema.choice(*ENGINES), "torch")
    gguf_type: str | None = checked(_gguf_type, None)  # llama.cpp only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine == "llama.cpp":
            if self.gguf_type not in _gguf_type_names():
                raise ConfigError("hardware.gguf_type", f"expected a llama.cpp GGUF type "
                                  f"({', '.join(_gguf_type_names())}), got {self.gguf_type!r}")
        elif self.gguf_type is not None:
            raise ConfigError("hardware.gguf_type", f"only meaningful with engine llama.cpp (this one is {self.engine})")

    @property
    def bytes_per_element(self) -> int:
        """Bytes per element of the runtime dtype (torch's weights, cache and activations)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes_per_param(self) -> float:
        """Bytes the engine stores (and reads per decode step) for one weight."""
        if self.engine == "llama.cpp":
            return _gguf_bytes_per_weight(self.gguf_type)
        return 4.0 if self.engine == "onnxruntime" else float(self.bytes_per_element)

    @property
    def kv_bytes_per_element(self) -> int:
        """Bytes per element of the engine's KV cache."""
        if self.engine == "llama.cpp":
            return LLAMACPP_KV_BYTES
        return 4 if self.engine == "onnxruntime" else self.bytes_per_element

    @property
    def activation_bytes_per_element(self) -> int:
        return self.bytes_per_element if self.engine == "torch" else 4

    @property
    def engine_label(self) -> str:
        return f"{self.engine} ({self.gguf_type})" if self.gguf_type else self.engine

    @classmethod
    def from_profile(cls, profile) -> "Hardware":
        dtype = profile.runtime.dtype
        if dtype not in profile.compute.peak_flops:
            raise ConfigError("compute.peak_flops", f"no peak FLOP/s for the runtime dtype {dtype!r}", profile.name)
        return cls(peak_flops=float(profile.compute.peak_flops[dtype]),
                   bandwidth_bytes_per_s=float(profile.memory.bandwidth_bytes_per_s), dtype=dtype,
                   engine=profile.runtime.engine, gguf_type=profile.runtime.gguf_type)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the bytes per weight / cache element are derived, written for readers (and checked on read)."""
        return {**dataclasses.asdict(self), "weight_bytes_per_param": self.weight_bytes_per_param,
                "kv_bytes_per_element": self.kv_bytes_per_element}


def roofline_features(shape: ParentShape, cfg: SubnetConfig, hw: Hardware, wl: Workload) -> dict[str, np.ndarray]:
    """The per-target feature vectors (see the module docstring) of one sub-network: ``{target: (4,)}`` in
    the order of :data:`FEATURE_NAMES` (roofline times in ms, byte counts in bytes), plus ``"_head"``: the
    LM head's prefill and decode roofline times in ms (what :func:`roofline_prior` puts in ``c0``)."""
    B, T, N = wl.batch_size, wl.prompt_tokens, wl.generate_tokens
    D, hd, V = shape.hidden_size, shape.head_dim, shape.vocab_size
    w, c, a = hw.weight_bytes_per_param, hw.kv_bytes_per_element, hw.activation_bytes_per_element  # bytes each
    g = shape.group_size
    heads = np.asarray(cfg.heads, dtype=np.float64)
    kv = heads / g
    mlp = np.asarray(cfg.mlp, dtype=np.float64)
    attn_params = D * hd * (2 * heads + 2 * kv)
    mlp_params = 3 * D * mlp
    ctx = T + (N - 1) / 2  # mean context length during decode
    # Prefill: matmuls over B*T tokens + causal attention scores/values (~2*T^2*hd per head, x2 for AV).
    attn_flops_prefill = 2 * B * T * attn_params + 4 * B * heads * T * T * hd / 2
    mlp_flops_prefill = 2 * B * T * mlp_params
    head_flops = 2 * B * D * V  # last-token logits only
    # Decode: every weight is read once per step (at the engine's bytes per weight), plus the layer's KV cache.
    attn_bytes_decode = attn_params * w + 2 * B * kv * hd * ctx * c
    mlp_bytes_decode = mlp_params * w
    head_bytes = D * V * w
    weight_bytes = shape.num_params(cfg) * w
    kv_bytes = float(2 * B * kv.sum() * hd * (T + N) * c)
    act_bytes = float(B * T * (D * 4 + max(mlp.max(), heads.max() * hd) * 3) * a + B * V * 4)
    to_ms = 1e3
    return {
        "prefill_ms": np.array([1.0, cfg.depth, attn_flops_prefill.sum() / hw.peak_flops * to_ms,
                                mlp_flops_prefill.sum() / hw.peak_flops * to_ms]),
        "decode_ms_per_token": np.array([1.0, cfg.depth, attn_bytes_decode.sum() / hw.bandwidth_bytes_per_s * to_ms,
                                         mlp_bytes_decode.sum() / hw.bandwidth_bytes_per_s * to_ms]),
        "peak_mem_bytes": np.array([1.0, float(weight_bytes), kv_bytes, act_bytes]),
        "_head": np.array([head_flops / hw.peak_flops * to_ms, head_bytes / hw.bandwidth_bytes_per_s * to_ms]),
    }


def roofline_prior(shape: ParentShape, hw: Hardware, wl: Workload) -> dict[str, list[float]]:
    """Coefficients of the uncalibrated predictor: pure roofline, no overheads."""
    f = roofline_features(shape, shape.full_config(), hw, wl)
    head_prefill_ms, head_decode_ms = f["_head"]
    return {
        "prefill_ms": [float(head_prefill_ms), 0.0, 1.0, 1.0],
        "decode_ms_per_token": [float(head_decode_ms), 0.0, 1.0, 1.0],
        "peak_mem_bytes": [0.0, 1.0, 1.0, 1.0],
    }

