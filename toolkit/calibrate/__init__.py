"""Stage 2, calibrate: reads a device profile (and the model), writes a predictor JSON.

The predictor says how fast and how large any sub-network of the model is on the profile's device, in
its engine, for its workload. It is a roofline prior whose coefficients are fitted on a few sub-networks
timed on the device (``toolkit calibrate --samples N``), or the prior alone (``--samples 0``).

* :mod:`~toolkit.calibrate.configs`: which sub-networks to measure (:func:`choose_calibration_configs`);
* :mod:`~toolkit.calibrate.latency`: time one sub-network's prefill, decode and peak memory in the profile's
  engine (torch, onnxruntime, llama.cpp) through :mod:`toolkit.measure`. It imports torch, so it is not
  imported here: import it as ``toolkit.calibrate.latency``;
* :mod:`~toolkit.calibrate.roofline`: the cost model, :class:`Hardware` and :class:`Workload` from the
  profile, :func:`roofline_features` and the uncalibrated prior;
* :mod:`~toolkit.calibrate.predictor`: :class:`Measurement`, the fitted :class:`Predictor` (fit, predict,
  cross-validated error report, JSON load/save);
* :mod:`~toolkit.calibrate.run`: the driver, :func:`calibrate` (measure here or on Ray workers, journal
  each measurement so a killed run resumes, fit), and where each measurement was taken.
"""

from toolkit.calibrate.configs import choose_calibration_configs
from toolkit.calibrate.predictor import Measurement, Predictor
from toolkit.calibrate.roofline import TARGETS, Hardware, Workload, roofline_features
from toolkit.calibrate.run import CalibrationWorker, calibrate, foreign_node_error, machine_record, recording_where

__all__ = ["TARGETS", "CalibrationWorker", "Hardware", "Measurement", "Predictor", "Workload", "calibrate",
           "choose_calibration_configs", "foreign_node_error", "machine_record", "recording_where",
           "roofline_features"]
