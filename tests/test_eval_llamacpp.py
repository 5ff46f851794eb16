"""``toolkit eval --engine llama.cpp``: the same requests and metrics as the PyTorch evaluator, scored in
llama.cpp on a GGUF file; on an f32 export both engines give the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.evaluate import LmEvalTokenizer, naive_loglikelihoods
from toolkit.tasks import get_task, load_task


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """SmolLM2's pre-tokenizer with merges, so transformers rebuilds it from a GGUF's metadata as it does for
    the real model (byte_tokenizer has no merges)."""
    from toolkit.models.tiny import bpe_tokenizer as build

    return build(digits=True)


@pytest.fixture(scope="module")
def f32_export(bpe_tokenizer, tmp_path_factory):
    """(tiny random Llama, its f32 GGUF export written by toolkit.export.gguf)."""
    pytest.importorskip("llama_cpp")
    from toolkit.export.gguf import write_gguf
    from toolkit.models.tiny import llama_tiny

    model = llama_tiny(vocab_size=len(bpe_tokenizer))
    path = tmp_path_factory.mktemp("gguf") / "tiny.f32.gguf"
    write_gguf(model, path, gguf_type="f32", tokenizer=bpe_tokenizer)
    return model, path


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh toolkit cache: the GGUF's tokenizer (and the PyTorch path's dequantized folder) built here."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))


def _items(tmp_path, n=24):
    """A task file shaped like the real ones: shared contexts, choices that share leading words and differ
    in length, and one context longer than the tiny model's 512 positions (cut from the left)."""
    words = "the sky is blue red green yes no maybe so which color question answer".split()
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        ctx = "Question: " + " ".join(rng.choice(words, int(rng.integers(3, 25)))) + "?\nAnswer:"
        if i == n - 1:
            ctx = " ".join(rng.choice(words, 900)) + "\n" + ctx
        choices = [" " + " ".join(rng.choice(words, int(k))) for k in (2, 2, 3)]
        choices.append(choices[1] + " so")  # shares all of choice 1's tokens
        rows.append({"id": f"q{i}", "context": ctx, "choices": choices, "label": i % 4})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_llamacpp_scorer_equals_naive_full_sequences(f32_export, bpe_tokenizer, tmp_path, own_cache):
    from toolkit.evaluate import LlamaCppScorer, TorchScorer

    model, path = f32_export
    data = load_task(get_task(str(_items(tmp_path, 12))))
    requests = LmEvalTokenizer(bpe_tokenizer, max_length=512).encode_pairs(
        [p for ex in data.examples[:-1] for p in ex.requests])  # (the long one: truncation, tested below)
    requests += [requests[0], (requests[0][0], requests[0][1][:1])]  # a repeat, and a prefix of an earlier input
    with LlamaCppScorer(path, threads=1, kv_f32=True) as scorer:
        lls, tokens = scorer.score(requests)
        assert scorer.max_length == 512 and scorer.file_type == "f32"
        assert scorer._llm.n_ctx < 512  # sized to the longest input, not the trained context
    assert np.abs(lls - naive_loglikelihoods(model, requests)).max() <= 1e-3
    assert lls[-2] == pytest.approx(lls[0], abs=1e-6)
    _, torch_tokens = TorchScorer(model).score(requests)
    assert tokens < sum(len(c) + len(x) - 1 for c, x in requests)  # shared prefixes were kept in the KV cache
    assert tokens <= torch_tokens + len(requests)


def test_cli_llamacpp_gives_the_torch_evaluators_predictions_on_an_f32_export(f32_export, tmp_path, capsys, own_cache):
    """The cross-check: the same GGUF through both engines, via the CLI (tokenizer from the GGUF in both)."""
    from toolkit.cli.main import main

    _, path = f32_export
    items = _items(tmp_path)
    out = tmp_path / "llamacpp.json"
    assert main(["eval", "--engine", "llama.cpp", "--model", str(path), "--task", str(items), "--kv-cache", "f32",
                 "--threads", "1", "--per-example", "--json", "--out", str(out)]) == 0
    cpp = json.loads(capsys.readouterr().out)
    assert cpp == json.loads(out.read_text())
    assert main(["eval", "--model", str(path), "--task", str(items), "--per-example", "--json", "--threads", "1"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert (cpp["engine"], cpp["gguf_file_type"], cpp["kv_cache"], cpp["threads"]) == ("llama.cpp", "f32", "f32", 1)
    assert ref["engine"] == "torch"
    from toolkit.fileio import sha256_file

    assert cpp["model_hash"] == sha256_file(path)[:16]
    a, b = cpp["results"][0], ref["results"][0]
    assert a["engine"] == "llama.cpp" and b["engine"] == "torch" and a["n"] == b["n"] == 24
    assert a["truncated_examples"] == b["truncated_examples"] == 1
    pa, pb = a["per_example"], b["per_example"]
    assert [e["id"] for e in pa] == [e["id"] for e in pb]
    assert [(e["pred"], e["pred_norm"]) for e in pa] == [(e["pred"], e["pred_norm"]) for e in pb]
    assert len({e["pred"] for e in pb}) > 1  # the predictions are not all one choice: the check can fail
    assert np.abs(np.array([e["loglikelihoods"] for e in pa]) - [e["loglikelihoods"] for e in pb]).max() <= 1e-3
    assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    # --limit / --seed / --split draw the same examples as in the PyTorch path
    assert main(["eval", "--engine", "llama.cpp", "--model", str(path), "--task", str(items), "--limit", "5",
                 "--seed", "2", "--split", "report", "--per-example", "--json", "--threads", "1"]) == 0
    sub = json.loads(capsys.readouterr().out)["results"][0]
    assert main(["eval", "--model", str(path), "--task", str(items), "--limit", "5", "--seed", "2", "--split", "report",
                 "--per-example", "--json", "--threads", "1"]) == 0
    ref_sub = json.loads(capsys.readouterr().out)["results"][0]
    assert sub["split"] == "report" and [e["id"] for e in sub["per_example"]] == [e["id"] for e in ref_sub["per_example"]]


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for p in parts:
        assert p in err[0], err[0]


def test_cli_llamacpp_refuses_a_hugging_face_folder(tiny_folder, tmp_path, capsys, model_must_not_load):
    from toolkit.cli.main import main

    assert main(["eval", "--engine", "llama.cpp", "--model", str(tiny_folder), "--task", str(_items(tmp_path))]) == 2
    _one_line_error(capsys, str(tiny_folder), ".gguf")


def test_cli_llamacpp_without_llama_cpp_python_names_the_extra(tmp_path, capsys, monkeypatch, model_must_not_load):
    import toolkit.engines
    from toolkit.cli.main import main

    monkeypatch.setattr(toolkit.engines, "is_available", lambda name: False)
    assert main(["eval", "--engine", "llama.cpp", "--model", "smollm2-135m", "--task", str(_items(tmp_path))]) == 2
    _one_line_error(capsys, "--engine", "llama-cpp-python", "llm-nas-toolkit[llamacpp]")


@pytest.mark.parametrize("flags,message", [
    (["--subnet", "cfg.json"], "--subnet: not with --engine llama.cpp"),
    (["--batch-tokens", "64"], "--batch-tokens: not with --engine llama.cpp"),
    (["--dtype", "float16"], "--dtype: not with --engine llama.cpp"),
    (["--device", "cuda"], "--device: not with --engine llama.cpp"),
    (["--task", "wikitext2"], "wikitext2 is a perplexity corpus"),
])
def test_cli_llamacpp_refuses_what_it_cannot_honour(tmp_path, capsys, flags, message, model_must_not_load):
    from toolkit.cli.main import main

    task = [] if "--task" in flags else ["--task", str(_items(tmp_path))]
    assert main(["eval", "--engine", "llama.cpp", "--model", "smollm2-135m", *task, *flags]) == 2
    _one_line_error(capsys, message)


def test_cli_kv_cache_needs_the_llamacpp_engine(tiny_folder, tmp_path, capsys, model_must_not_load):
    from toolkit.cli.main import main

    assert main(["eval", "--model", str(tiny_folder), "--task", str(_items(tmp_path)), "--kv-cache", "f32"]) == 2
    _one_line_error(capsys, "--kv-cache", "--engine llama.cpp")


@pytest.mark.slow
def test_smollm2_q4_1_in_llamacpp_agrees_with_the_torch_evaluator(smollm2, data_dir):
    """The embedded Q4_1 GGUF: PyTorch scores its dequantized weights, llama.cpp its Q4_1 blocks natively
    (activations quantized to q8_1 in the dot products), so log-likelihoods differ by quantization noise
    and predictions agree on almost all examples; the tokenization is identical (read from the dequantized
    folder the ``smollm2`` fixture's load left, as ``toolkit eval`` does after a PyTorch run).

    Measured here (12 examples, f32 KV cache): predictions 12/12 equal, acc_norm 11/12, |log-likelihood
    difference| median 0.12, max 0.36 nats."""
    pytest.importorskip("llama_cpp")
    from toolkit.evaluate import LlamaCppScorer, evaluate_task, gguf_tokenizer

    tokenizer = gguf_tokenizer(smollm2.source.path)
    data = load_task("arc_easy", data_dir).select(8, 0)
    pairs = [p for ex in data.examples for p in ex.requests]
    assert LmEvalTokenizer(tokenizer).encode_pairs(pairs) == LmEvalTokenizer(smollm2.tokenizer).encode_pairs(pairs)
    ref = evaluate_task(smollm2.model, smollm2.tokenizer, data, progress=False)
    with LlamaCppScorer(smollm2.source.path, threads=1, kv_f32=True) as scorer:
        got = evaluate_task(scorer, tokenizer, data, progress=False)
    assert got.engine == "llama.cpp" and got.n == ref.n == 8
    agree = np.mean([a.pred == b.pred for a, b in zip(got.per_example, ref.per_example)])
    diff = np.abs(np.array([e.loglikelihoods for e in got.per_example]).ravel()
                  - np.array([e.loglikelihoods for e in ref.per_example]).ravel())
    assert agree >= 7 / 8, agree
    assert np.median(diff) <= 0.5 and diff.max() <= 2.0, (np.median(diff), diff.max())
