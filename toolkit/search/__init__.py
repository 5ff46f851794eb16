"""Stage 3, search: NSGA-II over sub-networks (pymoo), resumable, with a journal; random search as the baseline.

Reads a search space (from the model), a predictor (``toolkit calibrate``'s JSON) and a task; writes a run
directory: ``run.json`` (settings, space, meta), ``evaluations.jsonl`` (the journal) and ``pareto.json``
(the front, for ``toolkit export``). The plots and tables of a run are :mod:`toolkit.report`'s.

Submodules: :mod:`.settings` (objectives, :class:`SearchSettings`, ``run.json``), :mod:`.evaluations` (the
:class:`Evaluation` record and the run's :class:`EvaluationJournal`), :mod:`.journal` (the append-only JSONL
file under it, shared with calibrate), :mod:`.searcher` (the driver, :class:`Searcher`), :mod:`.pareto`
(front, hypervolume, ``pareto.json``), :mod:`.executors` (where accuracy jobs run: local or Ray),
:mod:`.workers` (what grades one candidate). This package is the only one that imports pymoo, and only
inside the functions that use it. Objectives declare their direction (``higher_is_better``); only here is
that turned into pymoo's minimisation.

**Journal and resume.** Every evaluated sub-network is appended to ``run/evaluations.jsonl`` and
fsynced *before* it counts. Evaluations are cached by the sub-network's key (a config hash), so a
sub-network is never evaluated twice. ``--resume`` re-runs the algorithm from the start with the same
seed and replays journaled evaluations from the cache: NSGA-II is deterministic given its seed and the
objective values, so the resumed run follows the uninterrupted run's trajectory exactly, evaluating
only what the journal does not have yet. A line cut off by a kill is dropped (it never counted).

**Executors.** A generation is evaluated as one batch (:meth:`Searcher.evaluate_many`): predictions
and constraints on the driver, accuracy jobs on an executor (:mod:`toolkit.search.executors`: in this
process, or Ray workers that each load the model once, see :mod:`toolkit.search.workers`), records
journaled in the batch's order by the driver alone. Journal, trajectory and front are therefore the same
whatever the executor and however many workers; a worker lost mid-evaluation has its candidate re-queued
(``Searcher.retries``).

**Budget.** ``evals`` counts distinct sub-networks. The search stops at the first generation boundary
at or after the budget, so a run may overshoot by less than one population.

**Constraints.** Predicted peak memory must fit the profile's usable memory; optionally a minimum
accuracy and a maximum parameter count. A candidate that violates a *predicted* constraint is recorded
as infeasible without measuring its accuracy (it costs nothing; its record has no ``accuracy``), except
the parent: it is the reference results are read against, so its accuracy is always measured
(``pareto.json``: ``parent.accuracy_measured``). A candidate whose evaluation raises is recorded with the
error, made infeasible, and the search goes on; a :class:`UserError` (bad input, the same for every
candidate) stops it instead. ``pareto.json`` counts the feasible candidates (``feasible_count``): 0 means
the front is empty, and ``toolkit search`` exits 3.

**Which examples.** ``toolkit search`` grades candidates on the task's *search* part only
(:meth:`toolkit.tasks.TaskData.split`); the front's accuracies are selected on, so they are optimistic, and
numbers to report come from the disjoint *report* part (``toolkit eval --split report``). ``run.json``
records the part in ``meta.split`` (runs from before it: all examples), a resume on another part is
refused, and ``pareto.json`` says which part its accuracies are on (``split``, ``limit``).
"""

from toolkit.search.evaluations import Evaluation, EvaluationJournal, accuracy_measured, load_evaluations
from toolkit.search.extra import require_search_extra
from toolkit.search.pareto import SearchResult, hypervolume, pareto_front, summarise, to_minimisation, write_pareto
from toolkit.search.searcher import AccuracyFn, PredictFn, Searcher
from toolkit.search.settings import (OBJECTIVES, SEARCH_VERSION, Objective, SearchSettings, axis_labels,
                                     check_same_split, read_run_record, run_split)

__all__ = ["AccuracyFn", "Evaluation", "EvaluationJournal", "OBJECTIVES", "Objective", "PredictFn", "SEARCH_VERSION",
           "SearchResult", "SearchSettings", "Searcher", "accuracy_measured", "axis_labels", "check_same_split",
           "hypervolume", "load_evaluations", "pareto_front", "read_run_record", "require_search_extra", "run_split",
           "summarise", "to_minimisation", "write_pareto"]
