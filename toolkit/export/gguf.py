"""GGUF export: a sub-network as a file llama.cpp (and ollama, LM Studio) runs, quantized by llama.cpp itself.

**Architecture.** A sub-network whose kept layers all have the same MLP width and head count is written
as llama.cpp's ``llama`` architecture. One whose layers differ is written as ``deci``, the architecture
llama.cpp built for NVIDIA's heterogeneous NAS models (Llama-3_1-Nemotron-51B): its
``feed_forward_length``, ``attention.head_count`` and ``attention.head_count_kv`` are per-layer arrays
and every layer is built with its own ``n_ff(i)``, ``n_head(i)``, ``n_head_kv(i)``; its layers compute
exactly what a Llama layer computes. Dropped layers are simply not written (``block_count`` is the
kept depth). Both are checked by teacher-forced parity against PyTorch (:mod:`toolkit.export.parity`).
Layers without an MLP (``n_ff = 0``) are refused: llama.cpp's ``deci`` graph skips the residual of such a
layer. The head dimension is written explicitly (``attention.key_length`` / ``value_length``), since with
fewer heads ``hidden / heads`` no longer gives it.

**Weights.** Hugging Face's Llama applies rotary embeddings to the two halves of each head
(``rotate_half``); llama.cpp's ``llama``/``deci`` rope rotates adjacent pairs, so the rows of ``q_proj``
and ``k_proj`` are reordered within each head (half ``i`` of the pair-th dimension goes to row
``2 * pair + i``), as llama.cpp's own converter does. 2-D weights are written in f32 or f16, norms in f32;
every other type (q8_0, q4_k_m, ...) is made from the f32 file by llama.cpp's own quantizer
(:func:`toolkit.engines.llamacpp.quantize`), so the file is what ``llama-quantize`` would have produced.

**Tokenizer.** Copied key by key (``tokenizer.*``: vocabulary, merges, token types, special ids, chat
template) from the source GGUF when the parent came from one (the embedded SmolLM2 does), else built
from a Hugging Face BPE tokenizer (``tokenizer.json``): tokens by id, merges, control tokens for special
added tokens, and ``tokenizer.ggml.pre`` named after the pre-tokenizer (llama.cpp identifies them by
name: GPT-2's regex is ``gpt-2``, digits-then-GPT-2 is ``smollm``, anything else ``default``). The export
then checks that llama.cpp encodes test strings exactly as the Hugging Face tokenizer does.

Why hand-written: llama.cpp's ``convert_hf_to_gguf.py`` is a script inside llama.cpp's source tree (not in
the ``gguf`` package), reads a folder rather than a model in memory, and does not know per-layer widths
for the Llama architecture. The ``gguf`` package's writer does the file format.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.errors import UserError
from toolkit.models import geometry

GGUF_FILE = "model.gguf"
GGUF_F16_TOLERANCE = 2e-2  # max |logit diff| of an f16 GGUF vs PyTorch with f16-rounded weights
GGUF_QUANT_TOLERANCE = 5e-3  # a quantized GGUF vs its own reference (llama.cpp's SIMD paths differ by host)


def gguf_tolerance(gguf_type: str) -> float:
    """The parity tolerance of a GGUF of this type (:mod:`toolkit.export.parity`): f32 as every format,
    f16 / bf16 :data:`GGUF_F16_TOLERANCE` (llama.cpp also rounds activations inside f16 matmuls), a quantized
    type :data:`GGUF_QUANT_TOLERANCE` against its own reference."""
    from toolkit.export.parity import TOLERANCE

    return TOLERANCE if gguf_type == "f32" else GGUF_F16_TOLERANCE if gguf_type in ("f16", "bf16") else GGUF_QUANT_TOLERANCE


def layer_shapes(model) -> list[dict[str, int]]:
    """Per kept layer: query heads, kv heads, MLP width (read from the weights, not the config)."""
    hd = head_dim(model)
    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        out.append({"heads": a.q_proj.weight.shape[0] // hd, "kv_heads": a.k_proj.weight.shape[0] // hd,
                    "ff": m.gate_proj.weight.shape[0]})
    return out


def head_dim(model) -> int:
    return geometry.head_dim(model.config)


def _rope_theta(config) -> float:
    rp = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = (rp.get("rope_type") if isinstance(rp, Mapping) else None) or scaling.get("rope_type") or "default"
    if kind != "default":
        raise UserError(f"gguf export: rope type {kind!r} is not supported (only unscaled rotary embeddings)")
    theta = (rp.get("rope_theta") if isinstance(rp, Mapping) else None) or getattr(config, "rope_theta", None)
    return float(theta or 10000.0)


def _pairwise_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the rows of a q/k projection from HF's half-split rotary layout to llama.cpp's pairs."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _check_supported(model) -> None:
    c = model.config
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise UserError("gguf export: models with attention or MLP biases are not supported")
    if getattr(c, "hidden_act", "silu") != "silu":
        raise UserError(f"gguf export: activation {c.hidden_act!r} is not supported (Llama uses silu)")
    for i, s in enumerate(layer_shapes(model)):
        if s["ff"] <= 0 or s["heads"] <= 0 or s["kv_heads"] <= 0:
            raise UserError(f"gguf export: layer {i} has no MLP or no attention, which llama.cpp's deci "
                            "architecture does not compute like a Llama layer")


# -- tokenizer ------------------------------------------------------------------------------------
def _copy_tokenizer(writer, source_gguf: Path) -> dict[str, Any]:
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(str(source_gguf))
    copied = 0
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(name, f.contents(), vtype, sub_type=f.types[1])
        else:
            writer.add_key_value(name, f.contents(), vtype)
        copied += 1
    pre = r.fields.get("tokenizer.ggml.pre")
    return {"from": f"source GGUF {source_gguf.name}", "keys": copied,
            "pre": pre.contents() if pre is not None else None}


def _pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer it implements (``default`` for any other)."""
    def byte_level(p: Any, regex: bool) -> bool:
        return isinstance(p, Mapping) and p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == regex

    if byte_level(pre, True):
        return "gpt-2"
    if isinstance(pre, Mapping) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and byte_level(parts[1], True)):
            return "smollm"  # digits one by one, then GPT-2's regex: SmolLM / StarCoder
    return "default"


def _build_tokenizer(writer, tokenizer, vocab_size: int) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise UserError("gguf export: the tokenizer is not a fast (tokenizer.json) tokenizer; export from a GGUF "
                        "source or a model with tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"gguf export: tokenizer model {model.get('type')!r} is not supported (BPE only)")
    vocab: dict[str, int] = dict(model.get("vocab", {}))
    special: set[int] = set()
    for t in spec.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    if max(vocab.values(), default=-1) >= vocab_size:
        raise UserError(f"gguf export: the tokenizer has ids beyond the model's {vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = 3 if i in special else 1  # CONTROL / NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    placeholder = None
    if not merges:
        # llama.cpp's gpt2 vocabulary requires a merges key and the gguf writer refuses an empty array: a
        # vocabulary without merges (pure byte level) gets one merge whose result is not a token, which
        # llama.cpp's BPE resolves back to the two byte tokens it came from, so no encoding changes.
        a, b = tokens[0], tokens[1]
        if a + b in vocab:
            raise UserError("gguf export: cannot write a merge-free BPE vocabulary whose first tokens merge")
        placeholder = f"{a} {b}"
        merges = [placeholder]
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int) and 0 <= v < vocab_size:
            add(v)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
    return {"from": "Hugging Face tokenizer.json (BPE)", "tokens": len(vocab), "merges": len(merges) - bool(placeholder),
            "placeholder_merge": placeholder, "pre": pre}


# -- writing --------------------------------------------------------------------------------------
def _write_float_gguf(model, path: Path, dtype: str, tokenizer=None, source_gguf: Path | None = None,
                      name: str | None = None) -> dict[str, Any]:
    import gguf
    import torch

    _check_supported(model)
    c = model.config
    shapes = layer_shapes(model)
    uniform = all(s == shapes[0] for s in shapes)
    arch = "llama" if uniform else "deci"
    hd = head_dim(model)
    wdtype = np.float16 if dtype == "f16" else np.float32
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name or "toolkit sub-network")
    w.add_file_type(1 if dtype == "f16" else 0)
    w.add_context_length(int(c.max_position_embeddings))
    w.add_embedding_length(int(c.hidden_size))
    w.add_block_count(len(shapes))
    per_layer = (lambda k: shapes[0][k]) if uniform else (lambda k: [s[k] for s in shapes])
    w.add_feed_forward_length(per_layer("ff"))
    w.add_head_count(per_layer("heads"))
    w.add_head_count_kv(per_layer("kv_heads"))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(_rope_theta(c))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(int(c.vocab_size))
    tok = (_copy_tokenizer(w, source_gguf) if source_gguf is not None
           else _build_tokenizer(w, tokenizer, int(c.vocab_size)) if tokenizer is not None else None)
    if tok is None:
        raise UserError("gguf export: needs a tokenizer (a source GGUF or a Hugging Face tokenizer)")

    def arr(t: torch.Tensor, two_d: bool = True) -> np.ndarray:
        a = t.detach().to(torch.float32).cpu().numpy()
        return a.astype(wdtype) if two_d else a

    emb = model.model.embed_tokens.weight
    w.add_tensor("token_embd.weight", arr(emb))
    w.add_tensor("output_norm.weight", arr(model.model.norm.weight, False))
    head = model.lm_head.weight
    tied = head.data_ptr() == emb.data_ptr() or (head.shape == emb.shape and torch.equal(head, emb))
    if not tied:
        w.add_tensor("output.weight", arr(head))
    for i, (layer, s) in enumerate(zip(model.model.layers, shapes)):
        a, m = layer.self_attn, layer.mlp
        q = _pairwise_rope_rows(a.q_proj.weight.detach().float().cpu().numpy(), s["heads"])
        k = _pairwise_rope_rows(a.k_proj.weight.detach().float().cpu().numpy(), s["kv_heads"])
        w.add_tensor(f"blk.{i}.attn_norm.weight", arr(layer.input_layernorm.weight, False))
        w.add_tensor(f"blk.{i}.attn_q.weight", q.astype(wdtype))
        w.add_tensor(f"blk.{i}.attn_k.weight", k.astype(wdtype))
        w.add_tensor(f"blk.{i}.attn_v.weight", arr(a.v_proj.weight))
        w.add_tensor(f"blk.{i}.attn_output.weight", arr(a.o_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", arr(layer.post_attention_layernorm.weight, False))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", arr(m.gate_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_up.weight", arr(m.up_proj.weight))
        w.add_tensor(f"blk.{i}.ffn_down.weight", arr(m.down_proj.weight))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch, "heterogeneous": not uniform, "block_count": len(shapes), "head_dim": hd,
            "layers": shapes, "tied_embeddings": bool(tied), "tokenizer": tok}


def write_gguf(model, path: str | os.PathLike, *, gguf_type: str = "f32", tokenizer=None,
               source_gguf: str | os.PathLike | None = None, threads: int | None = None,
               name: str | None = None) -> dict[str, Any]:
    """Write the PyTorch Llama ``model`` (a stock or heterogeneous sub-network) to ``path`` as GGUF.

    f32 / f16 are written directly; any other type is written as f32 next to ``path`` and quantized by
    llama.cpp into ``path`` (the f32 file is removed). ``path`` appears only when complete (written under
    a temporary name, then renamed), so a killed export leaves no GGUF behind. Returns the details a
    manifest records (architecture, per-layer shapes, tokenizer source, type, bytes).
    """
    from toolkit.engines.llamacpp import gguf_type as lookup

    t = lookup(gguf_type)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = Path(source_gguf) if source_gguf is not None else None
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    raw = tmp if t.name in ("f32", "f16") else tmp.with_suffix(".f32.tmp")
    try:
        details = _write_float_gguf(model, raw, t.name if t.name in ("f32", "f16") else "f32", tokenizer, src, name)
        if os.environ.get("TOOLKIT_GGUF_TEST_SLEEP"):  # test hook: a kill between writing and quantizing
            import time

            time.sleep(float(os.environ["TOOLKIT_GGUF_TEST_SLEEP"]))
        if raw != tmp:
            from toolkit.engines.llamacpp import quantize

            quantize(raw, tmp, t.name, threads)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        for p in {tmp, raw}:
            p.unlink(missing_ok=True)
    return {**details, "gguf_type": t.name, "quantized_by": "llama.cpp llama_model_quantize" if t.quantized else None,
            "bytes": path.stat().st_size}


def source_gguf_of(loaded) -> Path | None:
    """The GGUF file a parent came from (embedded default or a .gguf), for its tokenizer metadata; ``loaded`` is
    a :class:`~toolkit.models.loading.LoadedModel` or its :class:`~toolkit.models.loading.ModelSource`."""
    src = getattr(loaded, "source", loaded)
    if src is not None and getattr(src, "kind", None) in ("embedded", "gguf"):
        return Path(src.path)
    return None
