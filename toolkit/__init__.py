"""Hardware-aware one-shot NAS for LLaMA-family models.

The data flow is the architecture; each stage is a package named after it::

    profiles/   ->  calibrate/       ->  [finetune/]            ->  search/                  ->  export/
    device YAML     predictor JSON        super-network folder       journal + pareto.json        artifact + manifest

Around them: ``evaluate/`` and ``tasks/`` (accuracy as lm-eval computes it), ``space.py`` and
``elastic.py`` (sub-networks and cutting them out), ``models/`` (loading, geometry), ``engines/``
(llama.cpp), ``measure.py`` (timing), ``schema.py`` (checking the files a user hands the toolkit),
``report.py`` (plots and tables), ``cli/`` (one module per subcommand).

Importing this package is cheap: it starts no CUDA and imports neither pymoo, onnx, gptqmodel nor ray.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
