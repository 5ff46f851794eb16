"""The latency and memory predictor: the roofline prior of :mod:`toolkit.calibrate.roofline`, corrected by
a few measured sub-networks.

:class:`Predictor` holds, for one model on one device profile, the coefficients of each target's linear
model over its roofline features, the measurements they were fitted on and the cross-validated error.
:meth:`Predictor.fit` fits the coefficients by non-negative least squares (scipy) on relative error;
:meth:`Predictor.cross_validate` and :meth:`Predictor.evaluate` are the error report (MAPE, share within
10 %, Kendall tau). A predictor is a versioned JSON file (:meth:`Predictor.save`, :meth:`Predictor.load`,
validated field by field); it records its engine and GGUF type, a file without them reads as torch,
and a search for a profile with another engine refuses it (:meth:`Predictor.check_engine`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.calibrate.roofline import (FEATURE_NAMES, TARGETS, Hardware, Workload,
                                        roofline_features, roofline_prior)
from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json
from toolkit.schema import parse_json, read_text_file
from toolkit.space import ParentShape, SubnetConfig

PREDICTOR_VERSION = 1


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
    # ("local" in this process). Empty when not recorded.
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
    try:
        x = schema.real(v)
        if x < 0 or (positive and x == 0):
            raise schema.Invalid(f"expected a finite {'positive' if positive else 'non-negative'} number, got {x!r}")
    except schema.Invalid as bad:
        raise ConfigError(field_name, bad.problem, file) from None
    return x


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
        """Predicted speed and memory of the sub-network ``cfg`` on this predictor's device, engine and workload.

        ``cfg`` must fit inside :attr:`shape` (check it with ``self.shape.check(cfg)``: ``predict`` does not).
        The workload is the one calibrated for (:attr:`workload`: batch ``B``, prompt ``T``, ``N`` generated
        tokens). Returns a dict of floats:

        * ``prefill_ms``: milliseconds for one forward pass over the ``(B, T)`` prompt into a fresh KV cache,
          logits for the last position only;
        * ``decode_ms_per_token``: milliseconds per cached decode step (one new token per sequence),
          averaged over the ``N`` steps;
        * ``decode_tokens_per_s``: tokens per second over the batch, ``B * 1000 / decode_ms_per_token``;
        * ``peak_mem_bytes``: bytes at peak during one prefill + decode (weights, KV cache, activations);
        * ``params``: the sub-network's parameter count, embeddings and final norm included.

        An uncalibrated predictor (:attr:`calibrated` false) returns the pure roofline estimate.
        """
        f = roofline_features(self.shape, cfg, self.hardware, self.workload)
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
        feats = [roofline_features(self.shape, m.config, self.hardware, self.workload) for m in ms]
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
        feats = [roofline_features(self.shape, m.config, self.hardware, self.workload) for m in ms]
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
            return schema.fields(v, name, allowed, required, file)

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
        # A predictor without an engine field was calibrated in torch (the default engine).
        try:
            hardware = Hardware(**{k: v for k, v in hw.items() if k not in ("weight_bytes_per_param", "kv_bytes_per_element")})
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

