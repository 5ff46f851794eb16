"""Stage 4: export a chosen sub-network as a Hugging Face folder, ONNX (onnxruntime), GPTQ 4-bit or GGUF (llama.cpp).

**Reads** a search run's ``pareto.json`` (:class:`~toolkit.export.pareto.ParetoFront`; ``--pick`` names the
member) or a sub-network JSON (:class:`~toolkit.space.SubnetConfig`), plus the parent model it is cut from.
**Writes** one artifact folder per format, ``OUT/<format>/``, each with a ``manifest.json``
(:class:`~toolkit.export.manifest.Manifest`) holding its file hashes, provenance, measurements and the
reference ``toolkit verify`` re-checks.

Each format folder is written in a temporary sibling folder and renamed only when the export and its
checks succeeded: an interrupted export leaves nothing visible behind, and what it left hidden (temporary
folders) is removed when the next export into ``OUT`` starts. With ``resume`` a format whose folder
already verifies (manifest readable, every file's hash as recorded, same sub-network and source model) is
kept instead of exported again.

Checks at export time, each the teacher-forced parity of :mod:`toolkit.export.parity` (the artifact's
logits on PyTorch's prompt + greedy continuation, at every position) on three fixed prompts:

* ``hf``: reloaded with the toolkit's own classes (:mod:`toolkit.export.hf`; no code from the folder runs).
* ``onnx``: onnxruntime CPU provider, prefill then one cached decode step per token; decode tokens/s vs
  PyTorch eager.
* ``gptq``: GPTQModel 4-bit (:mod:`toolkit.export.gptq`); 4-bit logits differ from fp32 by design, so its
  check is perplexity (and task accuracy when a task is given) before and after quantization, and its
  reference is the quantized model's own (what ``verify`` re-checks later).
* ``gguf``: llama.cpp (:mod:`toolkit.export.gguf`, run by :mod:`toolkit.engines.llamacpp` with an f32 KV
  cache for the checks). f32 and f16 files are checked against PyTorch's reference (f16 against the
  sub-network with its weights rounded to f16, at :data:`~toolkit.export.gguf.GGUF_F16_TOLERANCE`: llama.cpp
  also rounds activations to f16 inside f16 matmuls); quantized types (q8_0, q4_k_m, ...) differ by design,
  so like GPTQ their reference is llama.cpp's own output and their check is size on disk and perplexity
  (and task accuracy) before and after. Decode tokens/s and prefill ms are measured in llama.cpp.

A parity failure is a :class:`~toolkit.export.parity.ParityError`: one line, exit code 2, no artifact.

Modules:

* :mod:`~toolkit.export.pareto`: reading ``pareto.json`` (:class:`ParetoFront`) and the ``--pick`` rule.
* :mod:`~toolkit.export.request`: :class:`ExportRequest` (validated before a model loads), and what may
  happen to the format folders already in ``OUT`` (:func:`plan_formats`).
* :mod:`~toolkit.export.run`: :func:`export_subnet`, every requested format, each atomically.
* :mod:`~toolkit.export.formats`: one step per format (write, check, measure, return its manifest).
* :mod:`~toolkit.export.hf`, :mod:`~toolkit.export.onnx`, :mod:`~toolkit.export.gptq`,
  :mod:`~toolkit.export.gguf`: each format's writer and loader.
* :mod:`~toolkit.export.parity`: the teacher-forced reference and its comparison.
* :mod:`~toolkit.export.manifest`: ``manifest.json``.
* :mod:`~toolkit.export.verify`: ``verify``, the re-check of an artifact folder against its manifest
  (import it from there: re-exported here, the function would hide its module of the same name).
"""

from toolkit.export.manifest import Manifest
from toolkit.export.pareto import ParetoEntry, ParetoFront, Pick, best_within, parse_pick
from toolkit.export.request import ExportRequest, parse_formats, plan_formats
from toolkit.export.run import export_subnet

__all__ = ["ExportRequest", "Manifest", "ParetoEntry", "ParetoFront", "Pick", "best_within", "export_subnet",
           "parse_formats", "parse_pick", "plan_formats"]
