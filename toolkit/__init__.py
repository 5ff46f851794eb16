"""Hardware-aware one-shot NAS for LLaMA-family models.

The data flow is the architecture::

    profile (profiles/)    ->  calibrate (predictor.py)  ->  search (search/)  ->  export (export/)
      device YAML                predictor JSON               journal + pareto.json     artifact + manifest

Importing this package is cheap: it starts no CUDA and imports neither pymoo, onnx, gptqmodel nor ray.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
