"""Latency and memory predictor: a roofline prior corrected by a few measured sub-networks.

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
prior is the pure roofline (``c2 = c3 = 1``, LM-head roofline in ``c0``); calibration fits the
coefficients by non-negative least squares (scipy) on a few measured sub-networks chosen to fill the
space. Four coefficients per target is why ~10-20 samples suffice (HELP-like sample counts), where
one-hot regressors (DyNAS-T) need hundreds.

**Engine.** The features follow the profile's ``runtime.engine`` (:class:`Hardware`): decode reads
each weight at the engine's bytes per weight (torch: the runtime dtype; onnxruntime: fp32; llama.cpp:
the GGUF type's, e.g. 34/32 bytes for q8_0) and the KV cache at the engine's cache type (llama.cpp: f16).
The per-layer overhead ``c1`` is whatever the engine's calibration measures (large in PyTorch eager,
small in llama.cpp). A predictor records its engine and GGUF type; one written before they existed
reads as torch, and a search for a profile with another engine refuses it.

Why hand-written: nn-Meter / HELP predict CNN kernels or need meta-training; the transformer cost model
here is a few lines of algebra and NNLS.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.engines import ENGINES as _ENGINE_REGISTRY
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json
from toolkit.schema import parse_json, read_text_file
from toolkit.space import ParentShape, SearchSpace, SubnetConfig

PREDICTOR_VERSION = 1
TARGETS = ("prefill_ms", "decode_ms_per_token", "peak_mem_bytes")
FEATURE_NAMES = {
    "prefill_ms": ("const", "depth", "attn_roofline_ms", "mlp_roofline_ms"),
    "decode_ms_per_token": ("const", "depth", "attn_roofline_ms", "mlp_roofline_ms"),
    "peak_mem_bytes": ("const", "weight_bytes", "kv_cache_bytes", "activation_bytes"),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Workload:
    """What one deployment call does: prompt tokens in, generated tokens out, batch size."""

    prompt_tokens: int = 128
    generate_tokens: int = 32
    batch_size: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"workload.{f.name}", f"must be a positive integer, got {v!r}")

    @classmethod
    def from_profile(cls, profile) -> "Workload":
        wl = profile.workload
        return cls(wl.prompt_tokens, wl.generate_tokens, wl.batch_size)


ENGINES = tuple(_ENGINE_REGISTRY)  # torch, onnxruntime, llama.cpp
LLAMACPP_KV_BYTES = 2  # llama.cpp's default KV cache type is f16 (what toolkit.engines.llamacpp times)


def _gguf_bytes_per_weight(gguf_type: str) -> float:
    from toolkit.engines.llamacpp import GGUF_TYPES  # numpy/ctypes only; llama_cpp is not imported

    return GGUF_TYPES[gguf_type].bytes_per_weight


def _gguf_type_names() -> tuple[str, ...]:
    from toolkit.engines.llamacpp import GGUF_TYPES

    return tuple(GGUF_TYPES)


@dataclass(frozen=True)
class Hardware:
    """The device figures the roofline needs (taken from a DeviceProfile), and how the engine stores data.

    The bytes the decode roofline reads follow the engine: torch reads its weights, KV cache and
    activations at the runtime dtype; onnxruntime runs the fp32 ONNX export (4 bytes each); llama.cpp
    reads weights at the GGUF type's nominal bytes per weight
    (:data:`toolkit.engines.llamacpp.GGUF_TYPES`), keeps an f16 KV cache and f32 activations.
    """

    peak_flops: float  # FLOP/s at the runtime dtype
    bandwidth_bytes_per_s: float
    dtype: str = "float32"
    engine: str = "torch"
    gguf_type: str | None = None  # llama.cpp only

    def __post_init__(self) -> None:
        if not (self.peak_flops > 0 and self.bandwidth_bytes_per_s > 0):
            raise ConfigError("hardware", "peak FLOP/s and bandwidth must be positive")
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError("runtime.dtype", f"unsupported dtype {self.dtype!r}")
        if self.engine not in ENGINES:
            raise ConfigError("hardware.engine", f"expected one of {', '.join(ENGINES)}, got {self.engine!r}")
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


def features(shape: ParentShape, cfg: SubnetConfig, hw: Hardware, wl: Workload) -> dict[str, np.ndarray]:
    """The per-target feature vectors (see the module docstring) of one sub-network."""
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
    f = features(shape, shape.full_config(), hw, wl)
    head_prefill_ms, head_decode_ms = f["_head"]
    return {
        "prefill_ms": [float(head_prefill_ms), 0.0, 1.0, 1.0],
        "decode_ms_per_token": [float(head_decode_ms), 0.0, 1.0, 1.0],
        "peak_mem_bytes": [0.0, 1.0, 1.0, 1.0],
    }


@dataclass(frozen=True)
class Measurement:
    """One sub-network measured on the device."""

    config: SubnetConfig
    prefill_ms: float
    decode_ms_per_token: float
    peak_mem_bytes: float
    spread: Mapping[str, float] = field(default_factory=dict)  # relative spread per target
    flagged: bool = False  # too noisy even after re-measuring
    # Where it was measured: the machine's fingerprint (as a profile of it would have), host, Ray node id
    # ("local" in this process). Empty in predictors written before it was recorded.
    measured_on: Mapping[str, str] = field(default_factory=dict)

    def value(self, target: str) -> float:
        return float(getattr(self, target))

    def to_dict(self) -> dict[str, Any]:
        d = {"config": self.config.to_dict(), "prefill_ms": self.prefill_ms,
             "decode_ms_per_token": self.decode_ms_per_token,
             "decode_tokens_per_s": 1e3 / self.decode_ms_per_token,
             "peak_mem_bytes": self.peak_mem_bytes, "spread": dict(self.spread), "flagged": self.flagged}
        if self.measured_on:
            d["measured_on"] = dict(self.measured_on)
        return d

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None, where: str = "measurements[]",
                  shape: ParentShape | None = None) -> "Measurement":
        """Validate one measurement record (every field's type; the config against ``shape`` if given)."""
        pre = f"{where}." if where else ""
        if not isinstance(d, Mapping):
            raise ConfigError(where or "<root>", "expected an object", file)
        unknown = set(d) - {"config", "prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "peak_mem_bytes",
                            "spread", "flagged", "measured_on"}
        if unknown:
            raise ConfigError(f"{pre}{sorted(unknown)[0]}", "unknown field", file)
        for name in ("config", "prefill_ms", "decode_ms_per_token", "peak_mem_bytes"):
            if name not in d:
                raise ConfigError(f"{pre}{name}", "missing required field", file)
        cfg = SubnetConfig.from_nested(d["config"], f"{pre}config", file, shape.check if shape is not None else None)
        values = {t: _number(f"{pre}{t}", d[t], file, positive=True) for t in TARGETS}
        if "decode_tokens_per_s" in d:  # derived, written for readers: checked, not trusted
            _number(f"{pre}decode_tokens_per_s", d["decode_tokens_per_s"], file, positive=True)
        spread = d.get("spread", {})
        if not isinstance(spread, Mapping):
            raise ConfigError(f"{pre}spread", "expected an object of numbers", file)
        spread = {str(k): _number(f"{pre}spread.{k}", v, file) for k, v in spread.items()}
        flagged = d.get("flagged", False)
        if not isinstance(flagged, bool):
            raise ConfigError(f"{pre}flagged", f"expected true or false, got {flagged!r}", file)
        where_on = d.get("measured_on", {})
        if not isinstance(where_on, Mapping) or not all(isinstance(v, str) for v in where_on.values()):
            raise ConfigError(f"{pre}measured_on", "expected an object of strings (fingerprint, host, node_id)", file)
        return cls(cfg, values["prefill_ms"], values["decode_ms_per_token"], values["peak_mem_bytes"], spread, flagged,
                   {str(k): v for k, v in where_on.items()})


def _number(field_name: str, v: Any, file: str | None, positive: bool = False) -> float:
    """A finite JSON number (not a bool, not a string); ``positive``: > 0, else >= 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(field_name, f"expected a number, got {v!r}", file)
    v = float(v)
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        raise ConfigError(field_name, f"expected a finite {'positive' if positive else 'non-negative'} number, got {v!r}", file)
    return v


def fit_coefficients(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (rows scaled by 1/y, so small models count equally)."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(np.abs(y), 1e-12)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-30)  # column scaling for conditioning
    coef, _ = nnls((X * w[:, None]) / scale, y * w)
    return coef / scale


def error_report(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """MAPE (%), share within +-10 %, Kendall tau."""
    from scipy.stats import kendalltau

    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    rel = np.abs(p - t) / np.abs(t)
    tau = kendalltau(t, p).statistic if len(t) > 1 else float("nan")
    return {"mape_pct": float(100 * rel.mean()), "within_10pct": float((rel <= 0.10).mean()),
            "kendall_tau": float(tau), "n": int(len(t))}


@dataclass(frozen=True)
class Predictor:
    """Fitted (or prior-only) predictor for one model on one device profile. JSON, no pickle."""

    model_hash: str
    profile_name: str
    profile_fingerprint: str
    shape: ParentShape
    hardware: Hardware
    workload: Workload
    coefficients: Mapping[str, Sequence[float]]
    measurements: tuple[Measurement, ...] = ()
    cv: Mapping[str, Any] = field(default_factory=dict)
    version: int = PREDICTOR_VERSION

    def __post_init__(self) -> None:
        for t in TARGETS:
            if t not in self.coefficients or len(self.coefficients[t]) != len(FEATURE_NAMES[t]):
                raise ConfigError(f"coefficients.{t}", f"expected {len(FEATURE_NAMES[t])} coefficients")

    @property
    def calibrated(self) -> bool:
        return bool(self.measurements)

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, cfg: SubnetConfig) -> dict[str, float]:
        f = features(self.shape, cfg, self.hardware, self.workload)
        out = {t: float(np.dot(self.coefficients[t], f[t])) for t in TARGETS}
        out["decode_tokens_per_s"] = 1e3 / out["decode_ms_per_token"] * self.workload.batch_size
        out["params"] = float(self.shape.num_params(cfg))
        return out

    def check_model(self, model_hash: str, where: str = "predictor") -> None:
        if model_hash != self.model_hash:
            raise UserError(f"{where}: model_hash: predictor was calibrated for model {self.model_hash}, not {model_hash}")

    def check_engine(self, profile, where: str = "predictor") -> None:
        """Refuse (one line) predicting for a profile whose engine or GGUF type is not the one calibrated for."""
        rt, hw = profile.runtime, self.hardware
        if (rt.engine, rt.gguf_type) != (hw.engine, hw.gguf_type):
            theirs = f"{rt.engine} ({rt.gguf_type})" if rt.gguf_type else rt.engine
            field_name = "hardware.engine" if rt.engine != hw.engine else "hardware.gguf_type"
            raise UserError(f"{where}: {field_name}: predictor was calibrated in {hw.engine_label}, but the profile "
                            f"{profile.name!r} runs {theirs}; calibrate with that profile")

    # -- fitting ----------------------------------------------------------------------------------
    @classmethod
    def prior(cls, model_hash: str, profile_name: str, profile_fingerprint: str, shape: ParentShape,
              hw: Hardware, wl: Workload) -> "Predictor":
        return cls(model_hash, profile_name, profile_fingerprint, shape, hw, wl, roofline_prior(shape, hw, wl))

    def fit(self, measurements: Sequence[Measurement], folds: int | None = None) -> "Predictor":
        """Fit all targets from measurements (no new timing); cross-validate; return a new Predictor."""
        # Noisy (flagged) measurements are left out while enough clean ones remain.
        clean = [m for m in measurements if not m.flagged]
        ms = clean if len(clean) >= 4 else list(measurements)
        if len(ms) < 4:
            raise UserError(f"calibration: need at least 4 measured sub-networks to fit, got {len(ms)}")
        feats = [features(self.shape, m.config, self.hardware, self.workload) for m in ms]
        coefs = {}
        for t in TARGETS:
            X = np.stack([f[t] for f in feats])
            y = np.array([m.value(t) for m in ms])
            coefs[t] = [float(c) for c in fit_coefficients(X, y)]
        cv = self.cross_validate(ms, folds)
        prior = dataclasses.replace(self, coefficients=roofline_prior(self.shape, self.hardware, self.workload), measurements=())
        cv["uncalibrated"] = prior.evaluate(ms)
        return dataclasses.replace(self, coefficients=coefs, measurements=tuple(measurements), cv=cv)

    def cross_validate(self, ms: Sequence[Measurement], folds: int | None = None) -> dict[str, Any]:
        """k-fold (default leave-one-out) held-out error of each target."""
        n = len(ms)
        k = min(folds or n, n)
        idx = np.arange(n)
        preds = {t: np.zeros(n) for t in TARGETS}
        feats = [features(self.shape, m.config, self.hardware, self.workload) for m in ms]
        for fold in range(k):
            test = idx[idx % k == fold]
            train = idx[idx % k != fold]
            for t in TARGETS:
                X = np.stack([feats[i][t] for i in train])
                y = np.array([ms[i].value(t) for i in train])
                c = fit_coefficients(X, y)
                for i in test:
                    preds[t][i] = float(np.dot(c, feats[i][t]))
        return {"folds": k, **{t: error_report([m.value(t) for m in ms], preds[t]) for t in TARGETS}}

    def evaluate(self, ms: Sequence[Measurement]) -> dict[str, Any]:
        """Error of this predictor on measurements it may not have seen."""
        out = {}
        for t in TARGETS:
            out[t] = error_report([m.value(t) for m in ms], [self.predict(m.config)[t] for m in ms])
        tps_true = [1e3 / m.decode_ms_per_token * self.workload.batch_size for m in ms]
        tps_pred = [self.predict(m.config)["decode_tokens_per_s"] for m in ms]
        out["decode_tokens_per_s"] = error_report(tps_true, tps_pred)
        return out

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_hash": self.model_hash,
            "profile": {"name": self.profile_name, "fingerprint": self.profile_fingerprint},
            "shape": dataclasses.asdict(self.shape),
            "hardware": self.hardware.to_dict(),
            "workload": dataclasses.asdict(self.workload),
            "features": {t: list(FEATURE_NAMES[t]) for t in TARGETS},
            "coefficients": {t: list(map(float, self.coefficients[t])) for t in TARGETS},
            "cv": self.cv,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None) -> "Predictor":
        """Validate a predictor JSON field by field (types, counts, finiteness); one-line errors."""

        def obj(name: str, v: Any) -> Mapping[str, Any]:
            if not isinstance(v, Mapping):
                raise ConfigError(name, f"expected an object, got {type(v).__name__}", file)
            return v

        def text(name: str, v: Any) -> str:
            if not isinstance(v, str) or not v:
                raise ConfigError(name, f"expected a non-empty string, got {v!r}", file)
            return v

        def fields_of(name: str, v: Any, allowed: Sequence[str], required: Sequence[str]) -> Mapping[str, Any]:
            v = obj(name, v)
            for k in v:
                if k not in allowed:
                    raise ConfigError(f"{name}.{k}", "unknown field", file)
            for k in required:
                if k not in v:
                    raise ConfigError(f"{name}.{k}", "missing required field", file)
            return v

        d = obj("<root>", d)
        if d.get("version") != PREDICTOR_VERSION or isinstance(d.get("version"), bool):
            raise ConfigError("version", f"unsupported predictor version {d.get('version')!r}", file)
        for k in ("model_hash", "profile", "shape", "hardware", "workload", "coefficients"):
            if k not in d:
                raise ConfigError(k, "missing required field", file)
        profile = fields_of("profile", d["profile"], ("name", "fingerprint"), ("name", "fingerprint"))
        shape = ParentShape.from_dict(d["shape"], file)
        hw = fields_of("hardware", d["hardware"], ("peak_flops", "bandwidth_bytes_per_s", "dtype", "engine",
                                                   "gguf_type", "weight_bytes_per_param", "kv_bytes_per_element"),
                       ("peak_flops", "bandwidth_bytes_per_s"))
        dtype = hw.get("dtype", "float32")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise ConfigError("hardware.dtype", f"expected one of {', '.join(DTYPE_BYTES)}, got {dtype!r}", file)
        # A predictor written before engines existed was calibrated in torch.
        engine, gguf = hw.get("engine", "torch"), hw.get("gguf_type")
        if not isinstance(engine, str):
            raise ConfigError("hardware.engine", f"expected one of {', '.join(ENGINES)}, got {engine!r}", file)
        if gguf is not None and not isinstance(gguf, str):
            raise ConfigError("hardware.gguf_type", f"expected a GGUF type name or null, got {gguf!r}", file)
        try:
            hardware = Hardware(_number("hardware.peak_flops", hw["peak_flops"], file, positive=True),
                                _number("hardware.bandwidth_bytes_per_s", hw["bandwidth_bytes_per_s"], file, positive=True),
                                dtype, engine, gguf)
        except ConfigError as exc:
            raise exc.with_file(file) from None
        for name, derived in (("weight_bytes_per_param", hardware.weight_bytes_per_param),
                              ("kv_bytes_per_element", hardware.kv_bytes_per_element)):
            if name in hw and _number(f"hardware.{name}", hw[name], file, positive=True) != derived:
                # The coefficients were fitted on features made with other bytes (e.g. another GGUF table).
                raise ConfigError(f"hardware.{name}", f"{hw[name]!r} is not what this toolkit derives for "
                                  f"{hardware.engine_label} ({derived!r}); recalibrate", file)
        # Every workload field is required: a default would silently predict for another workload.
        wl_fields = [f.name for f in dataclasses.fields(Workload)]
        wl = fields_of("workload", d["workload"], wl_fields, wl_fields)
        try:
            workload = Workload(**wl)
        except ConfigError as exc:
            raise exc.with_file(file) from None
        if "features" in d and d["features"] != {t: list(FEATURE_NAMES[t]) for t in TARGETS}:
            raise ConfigError("features", "written for other predictor features than this toolkit's; recalibrate", file)
        coefs = fields_of("coefficients", d["coefficients"], TARGETS, TARGETS)
        coefficients = {}
        for t in TARGETS:
            c = coefs[t]
            if not isinstance(c, list) or len(c) != len(FEATURE_NAMES[t]):
                raise ConfigError(f"coefficients.{t}", f"expected a list of {len(FEATURE_NAMES[t])} numbers "
                                  f"({', '.join(FEATURE_NAMES[t])}), got {c!r}", file)
            coefficients[t] = [_number(f"coefficients.{t}[{i}]", v, file) for i, v in enumerate(c)]
        ms = d.get("measurements", [])
        if not isinstance(ms, list):
            raise ConfigError("measurements", f"expected a list, got {type(ms).__name__}", file)
        measurements = tuple(Measurement.from_dict(m, file, f"measurements[{i}]", shape) for i, m in enumerate(ms))
        return cls(model_hash=text("model_hash", d["model_hash"]), profile_name=text("profile.name", profile["name"]),
                   profile_fingerprint=text("profile.fingerprint", profile["fingerprint"]), shape=shape,
                   hardware=hardware, workload=workload, coefficients=coefficients, measurements=measurements,
                   cv=obj("cv", d.get("cv", {})))

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        return cls.from_dict(parse_json(read_text_file(path), str(path)), str(path))


def choose_calibration_configs(space: SearchSpace, n: int, seed: int = 0, pool: int = 4000) -> list[SubnetConfig]:
    """``n`` sub-networks that cover the space: the parent, the smallest, then greedy max-min distance
    over (depth, mean heads, mean MLP width, heterogeneity) among a seeded random pool that mixes
    uniform and heterogeneous configs."""
    if n < 2:
        raise UserError(f"--samples: need at least 2 calibration sub-networks, got {n}")
    rng = np.random.default_rng(seed)
    p = space.parent
    L, lo, hi = p.num_layers, *space.genome_bounds()
    mlp_choices, head_choices = np.asarray(space.mlp_choices), np.asarray(space.head_choices)
    kept = {d: np.asarray(space.kept_layers(d)) for d in space.depth_choices}

    def vec(depth, heads, mlp) -> list[float]:
        return [depth / L, np.mean(heads) / p.num_heads, np.mean(mlp) / p.intermediate_size,
                np.std(mlp) / p.intermediate_size]

    # The pool is kept as genomes / uniform sizes; only the chosen few become SubnetConfigs.
    cands: list[Any] = [space.largest(), space.smallest()]
    V = [vec(c.depth, c.heads, c.mlp) for c in cands]
    for i in range(pool):
        g = rng.integers(lo, hi + 1)  # what space.sample(rng) draws
        if i % 2:  # a uniform config at a random size: covers the diagonal of the space
            d = int(rng.choice(space.depth_choices))
            m, h = int(rng.choice(space.mlp_choices)), int(rng.choice(space.head_choices))
            cands.append((d, m, h))
            V.append([d / L, h / p.num_heads, m / p.intermediate_size, 0.0])
        else:
            layers = kept[space.depth_choices[g[0]]]
            cands.append(g)
            V.append(vec(len(layers), head_choices[g[1 + L + layers]], mlp_choices[g[1 + layers]]))
    V = np.asarray(V)
    chosen = [0, 1]
    dist = np.minimum(np.linalg.norm(V - V[0], axis=1), np.linalg.norm(V - V[1], axis=1))
    while len(chosen) < min(n, len(cands)):
        j = int(np.argmax(dist))
        if dist[j] <= 0:
            break
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(V - V[j], axis=1))

    def config(c) -> SubnetConfig:
        if isinstance(c, SubnetConfig):
            return c
        if isinstance(c, tuple):
            d, m, h = c
            return SubnetConfig(space.kept_layers(d), (m,) * d, (h,) * d)
        return space.decode(c)

    return [config(cands[i]) for i in chosen]


CALIBRATION_JOURNAL_VERSION = 1


def calibration_header(prior: Predictor, repeats: int | None = None,
                       runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a calibration journal's measurements depend on: a resume with any of it changed is refused."""
    hw = prior.hardware
    return {"journal": "calibration", "version": CALIBRATION_JOURNAL_VERSION, "model_hash": prior.model_hash,
            "profile_fingerprint": prior.profile_fingerprint, "workload": dataclasses.asdict(prior.workload),
            "dtype": hw.dtype, "repeats": repeats,
            "runtime": {**dict(runtime or {}), "engine": hw.engine, "gguf_type": hw.gguf_type}}


def calibrate(prior: Predictor, configs: Sequence[SubnetConfig], measure_fn=None, journal_path: str | Path | None = None,
              progress=None, *, repeats: int | None = None, runtime: Mapping[str, Any] | None = None,
              executor=None, check=None) -> Predictor:
    """Measure ``configs`` with ``measure_fn(cfg) -> Measurement`` (in this process) or on ``executor``
    (:mod:`toolkit.search.executors`: e.g. Ray workers on the target device, each built by a
    :class:`toolkit.latency.CalibrationWorker`), and fit ``prior``'s coefficients.

    Measurements are appended to ``journal_path`` (a :class:`toolkit.search.journal.JournalFile`: JSONL, each line
    fsynced, a line torn by a kill dropped on resume) as they are taken, so a killed calibration
    resumes without re-timing what it already has. The journal's header records what the measurements
    depend on (model hash, profile fingerprint, workload, dtype, ``repeats``, ``runtime``: the device,
    threads, and the engine and GGUF type from ``prior.hardware``); a journal written with other settings is a one-line error naming the differing fields
    (never silently discarded). ``check(measurement)`` sees every new measurement before it is journaled
    (where it was measured: a mismatch with the profile raises there). A measurement that raises stops
    the calibration (a UserError as itself, anything else as a RuntimeError naming the config).
    """
    from toolkit.search.executors import LocalExecutor
    from toolkit.search.journal import JournalFile, line_error

    if (measure_fn is None) == (executor is None):
        raise TypeError("calibrate needs exactly one of measure_fn and executor")
    done: dict[str, Measurement] = {}
    journal = None
    if journal_path is not None:
        journal = JournalFile(journal_path, calibration_header(prior, repeats, runtime), what="calibration journal")
        lines: dict[str, int] = {}
        for rec in journal:
            try:
                m = Measurement.from_dict(rec, str(journal.path), "", prior.shape)
            except ConfigError as exc:
                raise line_error(journal.path, rec.line, exc.field, exc.problem) from None
            key = m.config.key()
            if key in lines:
                raise line_error(journal.path, rec.line, "config", f"measured twice (first on line {lines[key]}; corrupt journal)")
            done[key], lines[key] = m, rec.line
    todo = list({c.key(): c for c in configs if c.key() not in done}.values())
    if progress is not None:
        for i, cfg in enumerate(c for c in configs if c.key() in done):
            progress(i + 1, done[cfg.key()])
    executor = executor if executor is not None else LocalExecutor(fn=measure_fn)
    for j, out in executor.imap_unordered(todo):
        if not out.ok:
            if out.exception is not None:
                raise out.exception
            if out.status == "user_error":
                raise UserError(out.error)
            raise RuntimeError(f"measuring {todo[j].to_json()}: {out.error}")
        m = out.value
        if check is not None:
            check(m)
        if journal is not None:
            journal.append(m.to_dict())
        done[todo[j].key()] = m
        if progress is not None:
            progress(sum(c.key() in done for c in configs), m)
    return prior.fit([done[c.key()] for c in configs])
