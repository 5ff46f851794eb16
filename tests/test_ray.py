"""The Ray executor on a real local cluster (``ray.init(num_cpus=2)``, not the deprecated local mode), on
the tiny model: the same search as the local executor, a killed worker, calibration on a custom resource,
and the one-line errors. CI installs the [ray] extra (via [dev]); with TOOLKIT_FAIL_ON_SKIP a skip fails."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from toolkit.cli.main import main  # noqa: E402
from toolkit.models.tiny import tiny_profile_yaml  # noqa: E402


@pytest.fixture
def task_file(tmp_path):
    rows = [{"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:", "choices": [f" {2 * i}", f" {i}", " no"],
             "label": i % 3} for i in range(16)]
    path = tmp_path / "tiny_task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _init_two_cpus():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)


@pytest.fixture(scope="module")
def _module_cluster():
    if ray.is_initialized():
        ray.shutdown()
    _init_two_cpus()
    yield
    ray.shutdown()


@pytest.fixture
def cluster(_module_cluster):
    """One real local cluster (two CPUs: two 1-CPU workers), shared by the module's tests; started again
    if a test in between shut it down (the calibration test runs its own two-node cluster)."""
    if not ray.is_initialized():
        _init_two_cpus()


@pytest.fixture(scope="module")
def prior(tmp_path_factory, tiny_folder):
    """A profile and a roofline-prior predictor for the tiny parent."""
    from toolkit.models import load_model
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.profiles import load_profile
    from toolkit.space import ParentShape

    d = tmp_path_factory.mktemp("prior")
    profile = d / "profile.yaml"
    profile.write_text(tiny_profile_yaml())
    p = load_profile(profile)
    predictor = d / "p.json"
    Predictor.prior(load_model(str(tiny_folder)).model_hash, p.name, p.fingerprint, ParentShape(4, 64, 256, 4, 2, 16, 256, True),
                    Hardware(1e11, 1e10), Workload(16, 4, 1)).save(predictor)
    return profile, predictor


def _search(tiny_folder, prior, task_file, calib_text, out, *extra):
    profile, predictor = prior
    return ["search", "--profile", str(profile), "--predictor", str(predictor), "--model", str(tiny_folder),
            "--calibration", str(calib_text), "--task", str(task_file), "--limit", "12", "--evals", "24",
            "--population", "8", "--seed", "3", "--out", str(out), "--allow-chance", *extra]


def _journal(run):
    return [json.loads(line) for line in (Path(run) / "evaluations.jsonl").read_text().splitlines()]


def _comparable(records):
    """A journal without the wall-clock seconds (the only field that may differ between executors)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _front(run):
    return [f["key"] for f in json.loads((Path(run) / "pareto.json").read_text())["front"]]


def test_ray_search_equals_local_search(cluster, tmp_path, tiny_folder, prior, task_file, calib_text, capsys):
    assert main(_search(tiny_folder, prior, task_file, calib_text, tmp_path / "local", "--json")) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(_search(tiny_folder, prior, task_file, calib_text, tmp_path / "ray",
                        "--executor", "ray", "--workers", "2", "--worker-threads", "1", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["executor"] == "ray" and summary["workers"] == 2 and summary["retries"] == 0
    assert local["executor"] == "local" and summary["evaluations"] == local["evaluations"] >= 24
    a, b = _journal(tmp_path / "local"), _journal(tmp_path / "ray")
    # the same candidates, in the same order, with the same metrics (accuracy included), the same front
    assert _comparable(a) == _comparable(b)
    assert any("accuracy" in r["metrics"] for r in b) and _front(tmp_path / "local") == _front(tmp_path / "ray")
    # --resume replays the journal with or without the cluster: nothing new is evaluated
    assert main(_search(tiny_folder, prior, task_file, calib_text, tmp_path / "ray", "--resume", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["new_evaluations"] == 0
    assert main(_search(tiny_folder, prior, task_file, calib_text, tmp_path / "local", "--resume",
                        "--executor", "ray", "--workers", "2", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["new_evaluations"] == 0


def _tiny_searcher(tiny_folder, calib_text, task_file, prior, run_dir, executor=None, accuracy=None):
    from toolkit.elastic import model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.calibrate import Predictor
    from toolkit.search import Searcher, SearchSettings
    from toolkit.search.workers import AccuracyWorker
    from toolkit.tasks import get_task, load_task

    loaded = load_model(str(tiny_folder))
    importance = load_or_compute_importance(loaded, calib_text)
    data = load_task(get_task(str(task_file)), task_file.parent).split("search")
    factory = AccuracyWorker(str(tiny_folder), loaded.model_hash, "float32", "cpu", importance, data, 12, 3, 1)
    settings = SearchSettings(evals=32, population=8, seed=3)
    predict = Predictor.load(prior[1]).predict
    if executor is None:
        return Searcher(model_space(loaded, importance), settings, factory(), predict, run_dir), factory
    return Searcher(model_space(loaded, importance), settings, None, predict, run_dir, executor=executor), factory


def test_a_killed_worker_loses_nothing_and_journals_nothing_twice(cluster, tmp_path, tiny_folder, prior, task_file,
                                                                   calib_text):
    from toolkit.search.executors import ExecutorSpec, RayExecutor

    reference, factory = _tiny_searcher(tiny_folder, calib_text, task_file, prior, tmp_path / "serial")
    expected = reference.run()
    with RayExecutor(factory, ExecutorSpec(kind="ray", workers=2)) as pool:
        searcher, _ = _tiny_searcher(tiny_folder, calib_text, task_file, prior, tmp_path / "ray", executor=pool)
        victim = pool.workers()[0]["pid"]
        journal = tmp_path / "ray" / "evaluations.jsonl"

        def kill_when_running():  # mid-run: once a few evaluations are journaled, SIGKILL one worker process
            while not journal.exists() or journal.read_text().count("\n") < 6:
                time.sleep(0.005)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_running, daemon=True)
        killer.start()
        result = searcher.run()
        killer.join(timeout=30)
        assert victim not in [w["pid"] for w in pool.workers()]  # replaced by a fresh worker
    records = _journal(tmp_path / "ray")
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys))  # nothing journaled twice
    assert keys == [e.key for e in expected.evaluations]  # nothing missing, same order
    assert _comparable(records) == _comparable(_journal(tmp_path / "serial"))
    assert [e.key for e in result.front] == [e.key for e in expected.front]
    assert searcher.retries >= 1 and pool.retries == searcher.retries  # the run says it retried


def _here_profile(path: Path) -> Path:
    """The tiny profile, but describing this machine (its fingerprint is this machine's)."""
    import dataclasses

    from toolkit.profiles import detect, load_profile

    src = path.parent / "tiny.yaml"
    src.write_text(tiny_profile_yaml())
    p, m = load_profile(src), detect("cpu")
    here = dataclasses.replace(
        p, name="tiny-here", identity=dataclasses.replace(p.identity, model=m.model),
        compute=dataclasses.replace(p.compute, cores=m.cores, threads=m.threads),
        memory=dataclasses.replace(p.memory, capacity_bytes=m.capacity_bytes, usable_bytes=m.capacity_bytes // 2),
        features=dataclasses.replace(p.features, **{f: getattr(m.features, f) for f in ("avx2", "avx512", "amx", "neon", "bf16", "fp16")}))
    here.save(path)
    assert load_profile(path).matches_current_machine()
    return path


def test_calibration_runs_on_the_node_with_the_resource(tmp_path, tiny_folder, calib_text, capsys):
    """A head without the resource and a second node advertising it: every measurement is taken on that
    node and records its fingerprint; a profile of another machine is refused there, one line."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    board = c.add_node(num_cpus=1, resources={"tiny-board": 1})
    try:
        ray.init(address=c.address, logging_level=40)
        profile = _here_profile(tmp_path / "here.yaml")
        out = tmp_path / "pred.json"
        args = ["calibrate", "--profile", str(profile), "--model", str(tiny_folder), "--calibration", str(calib_text),
                "--samples", "4", "--repeats", "1", "--executor", "ray", "--ray-resource", "tiny-board", "--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        from toolkit.profiles import load_profile

        ms = json.loads(out.read_text())["measurements"]
        assert len(ms) == 4
        assert {m["measured_on"]["node_id"] for m in ms} == {board.node_id}  # not the head's
        assert {m["measured_on"]["fingerprint"] for m in ms} == {load_profile(profile).fingerprint}
        capsys.readouterr()
        # a profile of another machine, sent to the named target: an error (not a warning), nothing written
        other = tmp_path / "other.yaml"
        other.write_text(tiny_profile_yaml())
        out2 = tmp_path / "pred2.json"
        assert main([*args[:2], str(other), *args[3:-1], str(out2)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--ray-resource tiny-board" in err[0] and "fingerprint" in err[0], err
        assert not out2.exists()
        # a resource no node advertises: one line, at once (not a pool waiting forever)
        assert main([*args[:-1], str(out2)][:-4] + ["--ray-resource", "no-such-board", "--out", str(out2)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no node advertises it" in err[0], err
        # 2 CPUs in the cluster, but not on the board's node: refused, not a pool waiting forever
        assert main([*args[:-1], str(out2)] + ["--worker-threads", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "on one node" in err[0], err
    finally:
        ray.shutdown()
        c.shutdown()


def test_ray_missing_and_bad_address_are_one_line(tmp_path, tiny_folder, prior, task_file, calib_text, capsys,
                                                  monkeypatch, model_must_not_load):
    if ray.is_initialized():
        ray.shutdown()
    base = _search(tiny_folder, prior, task_file, calib_text, tmp_path / "r", "--executor", "ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[ray]" in err[0] and "--executor ray" in err[0], err
    monkeypatch.delitem(sys.modules, "ray")
    t0 = time.perf_counter()
    assert main(base + ["--ray-address", "127.0.0.1:9"]) == 2  # nothing listens on the discard port
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray-address 127.0.0.1:9" in err[0], err
    assert time.perf_counter() - t0 < 30
    assert main(base + ["--ray-address", "no-port"]) == 2
    assert "--ray-address: 'no-port' is not auto or HOST:PORT" in capsys.readouterr().err
    assert main(base[:-2] + ["--workers", "2"]) == 2  # two workers need the ray executor
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written


def test_local_distillation_layer_jobs_on_ray_give_the_in_process_weights(cluster, tmp_path, tiny_folder, monkeypatch,
                                                                          training_text):
    from safetensors.torch import load_file

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, calib = training_text(16)

    def args(out, *extra):
        return ["finetune", "--model", str(tiny_folder), "--data", str(data), "--calibration", str(calib), "--out", str(out),
                "--seq-len", "32", "--precision", "fp32", "--min-mlp-fraction", "0.5", "--min-depth-fraction", "0.5",
                "--min-head-groups", "1", "--val-docs", "2", "--local-windows", "150", "--local-batch", "4",
                "--method", "local", "--local-lr", "1e-3", "--local-steps", "5", *extra]

    one, two = tmp_path / "one", tmp_path / "ray"
    assert main(args(one)) == 0
    assert main(args(two, "--executor", "ray", "--workers", "2", "--worker-threads", "1")) == 0
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    rec = json.loads((two / "local.json").read_text())
    assert rec["workers"] == 2 and rec["executor"]["executor"] == "ray" and len(rec["layers"]) == 4
    assert {layer["layer"] for layer in rec["layers"]} == {0, 1, 2, 3}


class RaisingWorker:
    """A stand-in evaluator that fails deterministically on some candidates (odd depth)."""

    def __call__(self):
        def evaluate(cfg):
            if cfg.depth % 2:
                raise ValueError(f"no luck at depth {cfg.depth}")
            return {"accuracy": 0.2 + 0.001 * sum(cfg.mlp) / len(cfg.mlp), "accuracy_stderr": 0.01}

        return evaluate


def test_a_raising_candidate_is_recorded_once_not_retried(cluster, tmp_path):
    import ray.cloudpickle

    from toolkit.search.executors import ExecutorSpec, RayExecutor
    from toolkit.search import Searcher, SearchSettings
    from toolkit.space import ParentShape, SearchSpace

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module is not importable in workers
    shape = ParentShape(6, 64, 256, 4, 2, 16, 256, True)
    space = SearchSpace.from_parent(shape, mlp_step=32)

    def predict(cfg):
        p = float(shape.num_params(cfg))
        return {"decode_tokens_per_s": 1e7 / p, "params": p, "peak_mem_bytes": 4 * p, "prefill_ms": p / 1e4}

    settings = SearchSettings(evals=24, population=8, seed=1)
    local = Searcher(space, settings, RaisingWorker()(), predict, tmp_path / "local").run()
    with RayExecutor(RaisingWorker(), ExecutorSpec(kind="ray", workers=2), num_cpus=0) as pool:
        searcher = Searcher(space, settings, None, predict, tmp_path / "ray", executor=pool)
        remote = searcher.run()
    errors = [e for e in remote.evaluations if e.error]
    assert errors and all(e.error.startswith("ValueError: no luck at depth") and not e.feasible for e in errors)
    assert searcher.retries == 0  # an exception is a result, not a lost worker
    assert _comparable(_journal(tmp_path / "ray")) == _comparable(_journal(tmp_path / "local"))
    assert [e.key for e in remote.front] == [e.key for e in local.front]


def test_executor_flags_and_gpu_workers(cluster, tmp_path, tiny_folder, prior, task_file, calib_text, capsys,
                                        model_must_not_load):
    from toolkit.search.executors import ExecutorSpec, RayExecutor, cuda_device_for_worker

    # Ray shows a worker that reserved a GPU only that GPU: the driver's cuda:N is cuda there
    assert cuda_device_for_worker("cuda:3", 1) == "cuda" and cuda_device_for_worker("cuda:3", 0) == "cuda:3"
    assert cuda_device_for_worker("cpu", 1) == "cpu"
    opts = RayExecutor(None, ExecutorSpec(kind="ray", workers=2, worker_gpus=0.5, worker_threads=4, resource="a100"))._options()
    assert opts["num_gpus"] == 0.5 and opts["num_cpus"] == 4 and opts["resources"] == {"a100": 1}
    assert opts["max_restarts"] == 0  # the pool replaces a dead worker itself (and re-queues its job)
    base = _search(tiny_folder, prior, task_file, calib_text, tmp_path / "r", "--executor", "ray")
    for flags, message in ((["--worker-gpus", "1"], "the pool needs 1 GPU, the cluster has 0"),
                           (["--workers", "3"], "the pool needs 3 CPU, the cluster has 2"),
                           (["--worker-gpus", "-1"], "--worker-gpus: expected a non-negative number")):
        assert main(base + flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_private_cluster_is_started_for_the_run_and_stopped(tmp_path):
    """No --ray-address and no cluster: the executor starts one for the run and shuts it down after."""
    from toolkit.search.executors import ExecutorSpec, RayExecutor
    from toolkit.space import SubnetConfig

    from ray import cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfgs = [SubnetConfig(layers=tuple(range(d)), mlp=(64,) * d, heads=(2,) * d) for d in (1, 2, 3, 4)]
    with RayExecutor(RaisingWorker(), ExecutorSpec(kind="ray", workers=2), num_cpus=0) as pool:
        assert ray.is_initialized() and len(pool.workers()) == 2
        outs = [o for _, o in sorted(pool.imap_unordered(cfgs), key=lambda t: t[0])]
    assert not ray.is_initialized()
    assert [o.status for o in outs] == ["error", "ok", "error", "ok"]
    assert outs[0].error == "ValueError: no luck at depth 1" and outs[1].value["accuracy"] == pytest.approx(0.264)


def test_scale_benchmark_writes_its_figures(tmp_path):
    """benchmarks/scale.py end to end on the stub part (the SmolLM2 part is the recorded run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import scale

    if ray.is_initialized():
        ray.shutdown()
    scale.main(["--skip-model", "--actors", "1,2", "--stub-evals", "8", "--stub-population", "4", "--sleep", "0.05",
                "--results-dir", str(tmp_path)])
    r = json.loads((tmp_path / "scale.json").read_text())
    st = r["stub"]
    assert set(st["runs"]) == {"1", "2"} and st["identical_fronts"] is True
    assert all(run["evaluations"] >= 8 for run in st["runs"].values())
    # the overhead is what the wall time has beyond the sleeps (so it is not negative, and sane)
    assert 0 <= st["driver_overhead_ms"] < 1000 and 0 < st["efficiency_2"] <= 1.0
    assert "driver_overhead_ms <= 50" in r["criteria"] and r["command"].startswith("python benchmarks/scale.py")
    assert (tmp_path / "scale.png").stat().st_size > 1000 and not ray.is_initialized()


class DyingWorker:
    """A worker whose process dies while it starts (as when the toolkit is missing on its node)."""

    def __call__(self):
        os._exit(3)


def test_a_worker_that_dies_while_starting_is_one_line(cluster):
    from ray import cloudpickle

    from toolkit.errors import UserError
    from toolkit.search.executors import ExecutorSpec, RayExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pool = RayExecutor(DyingWorker(), ExecutorSpec(kind="ray", workers=1), num_cpus=0)
    with pytest.raises(UserError) as e:
        pool.start()
    assert "died while starting" in str(e.value) and "\n" not in str(e.value)
