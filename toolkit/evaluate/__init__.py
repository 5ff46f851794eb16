"""Fast log-likelihood evaluation that gives lm-evaluation-harness' numbers, and windowed perplexity.

Reads a model (a PyTorch model, or a GGUF file run by llama.cpp) and a task (:mod:`toolkit.tasks`);
returns a :class:`TaskResult` (lm-eval's acc / acc_norm / mc2 with their standard errors, per-example
log-likelihoods) or a :class:`PerplexityResult`, which ``toolkit eval --out`` writes as JSON and the
search and export stages record.

* :mod:`~toolkit.evaluate.tokenization`: (context, continuation) pairs tokenized and truncated exactly as
  lm-eval's ``HFLM`` does; task lengths checked before a model loads.
* :mod:`~toolkit.evaluate.engine`: the packed prefix-tree engine that scores token requests on a PyTorch
  model, faster than lm-eval; :mod:`~toolkit.evaluate.tree_attention` is the attention it plugs into
  transformers.
* :mod:`~toolkit.evaluate.scorers`: the :class:`Scorer` seam between the evaluator and an engine
  (:class:`TorchScorer`, :class:`LlamaCppScorer`).
* :mod:`~toolkit.evaluate.results`: :func:`evaluate_task` and its per-example and per-task results.
* :mod:`~toolkit.evaluate.windowed_perplexity`: :func:`perplexity` of a text in fixed windows.

The result equals a plain full-sequence forward up to float rounding (tests check <= 1e-4 on tiny
models); ``benchmarks/evaluator.py`` checks the numbers against lm-eval itself.

Why hand-written: lm-eval is the reference, but it is a heavy dependency, slower for this workload
(``benchmarks/evaluator.py`` measures by how much) and (in the releases that pin ``huggingface_hub<1.0``)
incompatible with this project's transformers 5. It stays a cross-check (``benchmarks/evaluator.py``),
never a runtime dependency.
"""

from toolkit.evaluate.engine import DEFAULT_BATCH_TOKENS, naive_loglikelihoods, score_token_requests, tree_token_count
from toolkit.evaluate.results import ExampleResult, TaskResult, evaluate_task, mean_stderr, score_examples
from toolkit.evaluate.scorers import LlamaCppScorer, Scorer, TorchScorer, as_scorer
from toolkit.evaluate.tokenization import (
    LmEvalTokenizer,
    check_task_lengths,
    gguf_tokenizer,
    model_max_length,
    peek_tokenizer,
    truncation_warning,
)
from toolkit.evaluate.windowed_perplexity import PerplexityResult, perplexity

__all__ = [
    "DEFAULT_BATCH_TOKENS", "ExampleResult", "LlamaCppScorer", "LmEvalTokenizer", "PerplexityResult", "Scorer",
    "TaskResult", "TorchScorer", "as_scorer", "check_task_lengths", "evaluate_task", "gguf_tokenizer",
    "mean_stderr", "model_max_length", "naive_loglikelihoods", "peek_tokenizer", "perplexity", "score_examples",
    "score_token_requests", "tree_token_count", "truncation_warning",
]
