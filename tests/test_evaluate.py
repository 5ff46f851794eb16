"""The fast evaluator equals a naive full-sequence log-likelihood; lm-eval's tokenization and metrics;
windowed perplexity; the eval CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from toolkit.errors import UserError
from toolkit.evaluate import (
    LmEvalTokenizer,
    evaluate_task,
    mean_stderr,
    model_max_length,
    naive_loglikelihoods,
    perplexity,
    score_examples,
    score_token_requests,
    tree_token_count,
)
from toolkit.evaluate.tokenization import lm_eval_inputs
from toolkit.models.tiny import byte_tokenizer, llama_tiny
from toolkit.tasks import Example, get_task, load_task


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    return llama_tiny()


def _requests(rng, n_examples=12):
    """Token requests shaped like the real tasks: shared contexts of many lengths, short and long choices
    (PIQA-like, with shared leading tokens), single-token choices (MMLU-like) and partial scoring
    (per-choice contexts, a shared continuation)."""
    reqs, owners = [], []
    for e in range(n_examples):
        kind = e % 4
        ctx = rng.integers(3, 256, rng.integers(1, 40)).tolist()
        if kind == 0:  # arc / hellaswag
            for _ in range(rng.integers(2, 6)):
                reqs.append((ctx, rng.integers(3, 256, rng.integers(1, 12)).tolist()))
                owners.append(e)
        elif kind == 1:  # piqa: long choices sharing a prefix, very different lengths
            common = rng.integers(3, 256, 5).tolist()
            for n in (3, 60):
                reqs.append((ctx, common + rng.integers(3, 256, n).tolist()))
                owners.append(e)
        elif kind == 2:  # mmlu: one-token choices, every input identical
            for t in (65, 66, 67, 68):
                reqs.append((ctx, [t]))
                owners.append(e)
        else:  # winogrande partial: contexts differ at the end, continuation shared
            cont = rng.integers(3, 256, rng.integers(2, 10)).tolist()
            for opt in range(2):
                reqs.append((ctx + rng.integers(3, 256, opt + 1).tolist(), cont))
                owners.append(e)
    return reqs, owners


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_fast_path_equals_naive_full_sequence(model, budget):
    reqs, owners = _requests(np.random.default_rng(0))
    fast, tokens = score_token_requests(model, reqs, owners, max_batch_tokens=budget)
    slow = naive_loglikelihoods(model, reqs)
    assert np.abs(fast - slow).max() <= 1e-4
    naive_tokens = sum(len(c) + len(x) - 1 for c, x in reqs)
    assert tokens < 0.7 * naive_tokens  # shared prefixes ran once
    inputs = lm_eval_inputs(reqs, model_max_length(model))[0]
    assert tree_token_count(inputs, owners) == tokens  # what the engine runs, counted without a model


def test_fast_path_without_owners_scores_each_request_alone(model):
    reqs, _ = _requests(np.random.default_rng(1), 4)
    fast, _ = score_token_requests(model, reqs, None)
    assert np.abs(fast - naive_loglikelihoods(model, reqs)).max() <= 1e-4


def test_fast_path_on_heterogeneous_subnet_and_elastic_llama(model, tiny_importance):
    from toolkit.elastic import extract
    from toolkit.space import SubnetConfig

    child = extract(model, SubnetConfig((0, 2, 3), (256, 128, 64), (4, 2, 2)), tiny_importance)
    assert type(child).__name__ == "ElasticLlamaForCausalLM"
    reqs, owners = _requests(np.random.default_rng(2), 8)
    fast, _ = score_token_requests(child, reqs, owners, max_batch_tokens=256)
    assert np.abs(fast - naive_loglikelihoods(child, reqs)).max() <= 1e-4


def test_fast_path_on_real_examples_sdpa(tok):
    """Real task strings through the byte tokenizer, on the SDPA attention path."""
    m = llama_tiny(seed=3)
    m.config._attn_implementation = "sdpa"
    pairs = [("Question: Which is hot?\nAnswer:", " fire"), ("Question: Which is hot?\nAnswer:", " ice cubes"),
             ("The cat sat on the", " mat."), ("The dog sat on the", " mat."), ("", " Hello world")]
    enc = LmEvalTokenizer(tok).encode_pairs(pairs)
    fast, _ = score_token_requests(m, enc, [0, 0, 1, 1, 2], max_batch_tokens=32)
    assert np.abs(fast - naive_loglikelihoods(m, enc)).max() <= 1e-4


def test_tree_layout_masks_other_choices_and_padding():
    from toolkit.evaluate.tree_attention import TreeLayout

    # segment 0: prefix (2 tokens), choice 0 (2 tokens), choice 1 (1 token); segment 1: a 2-token prefix only
    layout = TreeLayout.build([([0, 1, 2, 3, 2], [-1, -1, 0, 0, 1]), ([0, 1], [-1, -1])])
    assert layout.index.tolist() == [[0, 1, 2, 3, 4], [5, 6, 0, 0, 0]]
    assert layout.valid.tolist() == [0, 1, 2, 3, 4, 5, 6]
    m = layout.mask[:, 0].int().tolist()
    assert m[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert m[1][:2] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert all(row[2:] == [0, 0, 0] for row in m[1])  # padding keys are seen by no one
    assert all(sum(row) > 0 for seg in m for row in seg)  # no all-masked row (NaN-free softmax)


def test_scoring_puts_the_attention_implementation_back():
    from toolkit.evaluate.tree_attention import tree_attention

    m = llama_tiny(seed=5)
    m.config._attn_implementation = "eager"
    reqs, owners = _requests(np.random.default_rng(3), 4)
    score_token_requests(m, reqs, owners)
    assert m.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="toolkit_tree"):
        with tree_attention(m):
            m(input_ids=torch.tensor([[5, 6, 7]]))  # no layout passed: a clear error, not a wrong answer
    assert m.config._attn_implementation == "eager"


def test_scoring_refuses_a_model_whose_attention_ignores_the_layout(monkeypatch):
    from transformers.models.llama import modeling_llama

    m = llama_tiny(seed=6)
    # An attention module that never calls the attention interface (as some custom model code does).
    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward",
                        lambda self, hidden_states, *a, **k: (self.o_proj(self.q_proj(hidden_states)), None))
    reqs, owners = _requests(np.random.default_rng(4), 2)
    with pytest.raises(UserError, match="AttentionInterface"):
        score_token_requests(m, reqs, owners)


# -- lm-eval tokenization -------------------------------------------------------------------------------
def lm_eval_encode_pair(tokenizer, context, continuation):
    """lm-eval's LM.loglikelihood + _encode_pair (lm_eval/api/model.py, 0.4.x), written out literally."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def test_encoding_follows_lm_eval(tok):
    enc = LmEvalTokenizer(tok)
    pairs = [("Question: x?\nAnswer:", " yes"), ("trailing space ", "word"), ("", " only continuation"),
             ("two  spaces  ", " x")]
    got = enc.encode_pairs(pairs)
    assert got == [lm_eval_encode_pair(tok, c, x) for c, x in pairs]
    assert got[1][1][0] == tok.encode(" ")[0]  # the trailing space moved into the continuation
    assert got[2][0] == [tok.bos_token_id]  # empty context: the prefix token (BOS, else EOS)


@pytest.mark.slow
def test_encoding_follows_lm_eval_smollm2(smollm2, data_dir):
    tok = smollm2.tokenizer
    pairs = [p for name in ("arc_easy", "piqa", "hellaswag", "winogrande")
             for ex in load_task(name, data_dir).select(40, 0).examples for p in ex.requests]
    pairs += [("", " a full sentence."), ("Answer: ", "yes")]
    assert LmEvalTokenizer(tok).encode_pairs(pairs) == [lm_eval_encode_pair(tok, c, x) for c, x in pairs]


# -- metrics -----------------------------------------------------------------------------------------
def test_mean_stderr_is_lm_eval_formula():
    x = [1.0, 0.0, 1.0, 1.0]
    mu = sum(x) / 4
    assert mean_stderr(x) == pytest.approx(math.sqrt(sum((v - mu) ** 2 for v in x) / 3) / 2)
    assert mean_stderr([1.0]) == 0.0


def test_acc_and_acc_norm_from_loglikelihoods(model, tok, monkeypatch):
    import toolkit.evaluate.scorers as scorers

    exs = [Example("a", (("c", " x"), ("c", " yyyy")), (1, 4), 1, 1),  # acc picks 0, acc_norm picks 1
           Example("b", (("c", " x"), ("c", " y")), (1, 1), 0, 2)]  # a tie goes to the first choice
    monkeypatch.setattr(scorers, "score_token_requests", lambda *a, **k: (np.array([-2.0, -4.0, -1.0, -1.0]), 7))
    per, tokens = score_examples(model, tok, exs)
    assert [(r.pred, r.pred_norm) for r in per] == [(0, 1), (0, 0)] and tokens == 7


def test_evaluate_task_on_a_user_file(model, tok, tmp_path):
    rows = [{"id": f"q{i}", "context": f"Question: item {i}?\nAnswer:", "choices": [" yes", " no", " maybe so"],
             "label": i % 3} for i in range(30)]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_task(get_task(str(path)))
    r = evaluate_task(model, tok, data, progress=False)
    assert r.n == 30 and len(r.per_example) == 30
    acc = np.mean([e.pred == e.label for e in r.per_example])
    assert r.acc == pytest.approx(acc) and r.acc_stderr == pytest.approx(mean_stderr([float(e.pred == e.label) for e in r.per_example]))
    # reference: argmax of naive log-likelihoods
    enc = LmEvalTokenizer(tok).encode_pairs([p for ex in data.examples for p in ex.requests])
    lls = naive_loglikelihoods(model, enc).reshape(30, 3)
    assert [e.pred for e in r.per_example] == lls.argmax(1).tolist()
    sub = evaluate_task(model, tok, data, limit=10, seed=4, progress=False)
    again = evaluate_task(model, tok, data, limit=10, seed=4, progress=False)
    assert sub.n == 10 and [e.id for e in sub.per_example] == [e.id for e in again.per_example]
    assert r.to_dict()["higher_is_better"] == {"acc": True, "acc_norm": True}
    assert "per_example" in r.to_dict(per_example=True)


@pytest.mark.slow
def test_smollm2_fast_equals_naive_on_real_tasks(smollm2, data_dir):
    model, tok = smollm2.model, smollm2.tokenizer
    for name in ("arc_easy", "winogrande"):
        exs = load_task(name, data_dir).select(3, 0).examples
        enc = LmEvalTokenizer(tok).encode_pairs([p for ex in exs for p in ex.requests])
        owners = [i for i, ex in enumerate(exs) for _ in ex.requests]
        fast, _ = score_token_requests(model, enc, owners)
        # fp32 SmolLM2: float32 rounding of a batched vs single forward (exact in float64, see the docs)
        assert np.abs(fast - naive_loglikelihoods(model, enc)).max() <= 2e-3


# -- perplexity ----------------------------------------------------------------------------------------
def _naive_ppl(model, ids, window, stride):
    nll, count, done = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        first = max(done, begin + 1)
        if end > first:
            x = torch.tensor([ids[begin:end]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=x).logits[0], -1)
            for t in range(first, end):
                nll -= float(logp[t - 1 - begin, ids[t]])
                count += 1
            done = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@pytest.mark.parametrize("window,stride", [(32, None), (32, 16), (40, 7)])
def test_perplexity_equals_naive_windows(model, tok, window, stride):
    text = "The quick brown fox jumps over the lazy dog. " * 6
    r = perplexity(model, tok, text, window=window, stride=stride, batch_size=3)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ref, count = _naive_ppl(model, ids, window, stride or window)
    n = len(ids)
    # non-overlapping: each window's first token is context only; overlapping: every token but the first
    assert r.tokens_scored == count == (n - -(-n // window) if stride is None else n - 1)
    assert r.perplexity == pytest.approx(ref, rel=1e-4)
    assert r.higher_is_better == {"perplexity": False}


def test_perplexity_reads_files_and_limits_tokens(model, tok, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh " * 40)
    a = perplexity(model, tok, path, window=16, max_tokens=100)
    b = perplexity(model, tok, str(path), window=16, max_tokens=100)
    assert a.perplexity == b.perplexity and a.tokens_total == 100 and a.tokens_scored == 100 - 7  # 7 windows of 16
    with pytest.raises(UserError):
        perplexity(model, tok, "abc", window=1)
    with pytest.raises(UserError):
        perplexity(model, tok, "abcdef", window=4, stride=5)


# -- CLI -----------------------------------------------------------------------------------------------
def _items(tmp_path, n=8):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "context": f"Q{i}:", "choices": [" a", " bb"], "label": i % 2})
                              for i in range(n)) + "\n")
    return path


def test_cli_eval_json_on_a_folder(tiny_folder, tmp_path, capsys):
    from toolkit.cli.main import main

    path = _items(tmp_path)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--limit", "5", "--json",
                 "--per-example", "--out", str(out), "--threads", "1"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec == json.loads(out.read_text())
    r = rec["results"][0]
    assert r["task"] == "items" and r["n"] == 5 and len(r["per_example"]) == 5 and 0 <= r["acc"] <= 1
    # a smaller pack size gives the same scores; a non-positive one is a one-line error, exit 2
    assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--limit", "5", "--json",
                 "--per-example", "--batch-tokens", "16"]) == 0
    small = json.loads(capsys.readouterr().out)["results"][0]["per_example"]
    assert np.allclose([e["loglikelihoods"] for e in small], [e["loglikelihoods"] for e in r["per_example"]], atol=1e-4)
    assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--batch-tokens", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-tokens" in err


def test_cli_eval_limit_0_is_every_example_as_in_search(tiny_folder, tmp_path, capsys):
    from toolkit.cli.main import main

    path = _items(tmp_path)
    results = []
    for limit in ([], ["--limit", "0"], ["--limit", "5"]):
        assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--per-example", "--json",
                     "--threads", "1", *limit]) == 0
        results.append(json.loads(capsys.readouterr().out)["results"][0])
    every, zero, five = results
    assert every["n"] == zero["n"] == 8 and five["n"] == 5
    assert zero["per_example"] == every["per_example"] and zero["acc"] == every["acc"]


def test_cli_eval_subnet(tiny_folder, tmp_path, capsys, data_dir):
    from toolkit.cli.main import main

    cfg = tmp_path / "sub.json"
    cfg.write_text(json.dumps({"layers": [0, 1, 3], "mlp": [128, 256, 64], "heads": [4, 2, 2]}))
    path = _items(tmp_path)
    assert main(["eval", "--model", str(tiny_folder), "--subnet", str(cfg), "--task", str(path), "--json",
                 "--data-dir", str(data_dir)]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["subnet"]["layers"] == [0, 1, 3] and rec["results"][0]["n"] == 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": [0, 9], "mlp": [64, 64], "heads": [2, 2]}))
    assert main(["eval", "--model", str(tiny_folder), "--subnet", str(bad), "--task", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "layers" in err


def test_cli_perplexity_and_list(tiny_folder, tmp_path, capsys):
    from toolkit.cli.main import main

    text = tmp_path / "t.txt"
    text.write_text("hello there, general kenobi. " * 10)
    assert main(["eval", "--model", str(tiny_folder), "--text", str(text), "--window", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["perplexity"] > 1 and r["window"] == 32
    assert main(["eval", "--list"]) == 0
    assert "winogrande" in capsys.readouterr().out
    assert main(["eval"]) == 2


# -- over-long inputs: lm-eval's left truncation, bounded tokenization, checked before the model loads --
class _CountingTokenizer:
    """Wraps a tokenizer and records the longest string it was asked to encode."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0
        self.bos_token_id, self.eos_token_id, self.decode = tok.bos_token_id, tok.eos_token_id, tok.decode

    def __call__(self, text, **kw):
        self.longest = max(self.longest, *(len(t) for t in ([text] if isinstance(text, str) else text)))
        return self.tok(text, **kw)


def test_a_multi_megabyte_context_is_cut_before_tokenizing_and_scores_as_lm_eval(model, tok):
    """lm-eval keeps the last max_length + 1 tokens of context + continuation (here 512 + 1 with a byte
    tokenizer: one token per character), so a 2.6 MB context scores exactly like its last 1000 characters;
    the tokenizer never sees more than a few thousand characters of it."""
    big = "the quick brown fox " * 130_000 + "Answer:"  # 2.6 MB
    short = big[-1000:]
    exs = [Example("big", ((big, " yes"), (big, " no")), (3, 2), 0, 1),
           Example("short", ((short, " yes"), (short, " no")), (3, 2), 0, 2)]
    counting = _CountingTokenizer(tok)
    per, _ = score_examples(model, counting, exs)
    assert counting.longest < 20_000
    assert per[0].loglikelihoods == pytest.approx(per[1].loglikelihoods, abs=1e-9)
    assert per[0].truncated and per[1].truncated
    ref = [lm_eval_encode_pair(tok, short, c) for c in (" yes", " no")]  # the full encode, then lm-eval's cut
    assert [((c + x)[-513:], x) for c, x in LmEvalTokenizer(tok, max_length=512).encode_pairs(exs[0].requests)] == \
        [((c + x)[-513:], x) for c, x in ref]


def test_cli_eval_refuses_an_over_long_continuation_before_loading(tiny_folder, tmp_path, capsys, model_must_not_load):
    from toolkit.cli.main import main

    path = tmp_path / "long.jsonl"
    rows = [{"context": "Q: a?\nA:", "choices": [" a", " b"], "label": 0},
            {"context": "Q: b?\nA:", "choices": [" x" * 600, " b"], "label": 1}]  # 1200 tokens > 512
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: choice 0:" in err[0] and "maximum length 512" in err[0]
    assert not (tmp_path / "r.json").exists()


def test_cli_eval_warns_once_when_contexts_are_cut(tiny_folder, tmp_path, capsys):
    from toolkit.cli.main import main

    path = tmp_path / "longctx.jsonl"
    rows = [{"context": "word " * 200 + f"Q{i}:", "choices": [" a", " b"], "label": i % 2} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"context": "Q:", "choices": [" a", " b"], "label": 0}]))
    assert main(["eval", "--model", str(tiny_folder), "--task", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == ["warning: longctx: 3 of 4 examples are longer than the model's maximum "
                                        "length of 512 tokens; their contexts are cut from the left, as lm-eval does"]
    assert json.loads(out)["results"][0]["truncated_examples"] == 3


@pytest.mark.parametrize("flags,message", [
    (["--limit", "-5"], "--limit: must be 0 (all examples) or positive"),  # search's words
    (["--threads", "0"], "--threads: must be at least 1"),
    (["--num-fewshot", "-1"], "--num-fewshot"),
    (["--dtype", "float33"], "--dtype: unknown torch dtype"),
    (["--subnet", "MISSING"], "MISSING"),
])
def test_cli_eval_bad_arguments_are_one_line_before_loading(tiny_folder, tmp_path, capsys, flags, message, model_must_not_load):
    from toolkit.cli.main import main

    flags = [str(tmp_path / "missing.json") if f == "MISSING" else f for f in flags]
    message = str(tmp_path / "missing.json") if message == "MISSING" else message
    assert main(["eval", "--model", str(tiny_folder), "--task", str(_items(tmp_path)), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_cli_eval_threads_are_scoped(tiny_folder, tmp_path, capsys):
    from toolkit.cli.main import main

    before = torch.get_num_threads()
    assert main(["eval", "--model", str(tiny_folder), "--task", str(_items(tmp_path)), "--limit", "2", "--json",
                 "--threads", str(before + 1)]) == 0
    assert torch.get_num_threads() == before


def test_cli_eval_refuses_a_subnet_that_does_not_fit_before_loading(tiny_folder, tmp_path, capsys, model_must_not_load):
    from toolkit.cli.main import main

    cfg = tmp_path / "wide.json"
    cfg.write_text(json.dumps({"layers": [0, 1], "mlp": [512, 64], "heads": [2, 2]}))  # the parent's MLP is 256
    assert main(["eval", "--model", str(tiny_folder), "--subnet", str(cfg), "--task", str(_items(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and "mlp[0]" in err[0]
