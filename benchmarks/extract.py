"""Extraction speed and what untrained sub-networks cost in perplexity (issue 2).

For a ~50 % sub-network of SmolLM2-135M: the extraction time (goal <= 1 s). For the parent and a few
sub-networks: perplexity on the first ~4k tokens of WikiText-2 test (tokenized v1; relative numbers).
Writes benchmarks/results/extract.json.

    python benchmarks/extract.py [--data-dir ../shared/data] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.elastic import default_space, extract, parent_shape
    from toolkit.evaluate import perplexity
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.space import SubnetConfig

    torch.set_num_threads(2)
    loaded = load_model(args.model)
    imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    space = default_space(loaded.model, imp)
    shape = parent_shape(loaded.model)
    full_body = shape.num_params(shape.full_config(), include_embeddings=False)
    text = data_dir(args.data_dir) / "wikitext2" / "test.txt"
    L = shape.num_layers

    def uniform(depth, mlp, heads):
        layers = space.kept_layers(depth)
        return SubnetConfig(layers, (mlp,) * depth, (heads,) * depth)

    configs = {
        "parent": shape.full_config(),
        "mlp_1152": uniform(L, 1152, 9),
        "mlp_768": uniform(L, 768, 9),
        "heads_6": uniform(L, 1536, 6),
        "depth_24": uniform(24, 1536, 9),
        "depth_20": uniform(20, 1536, 9),
        "half_mixed": uniform(24, 768, 6),
    }
    half = configs["half_mixed"]
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        child = extract(loaded.model, half, imp)
        times.append(time.perf_counter() - t)
        del child
    rows = []
    for name, cfg in configs.items():
        child = extract(loaded.model, cfg, imp)
        ppl = perplexity(child, loaded.tokenizer, text, window=512, max_tokens=args.tokens)
        frac = shape.num_params(cfg, include_embeddings=False) / full_body
        rows.append({"name": name, "config": cfg.to_dict(), "non_embedding_params_fraction": round(frac, 4),
                     "perplexity": round(ppl.perplexity, 3), "tokens_scored": ppl.tokens_scored})
        print(f"{name:12s} params {frac:6.1%}  ppl {ppl.perplexity:10.2f}", flush=True)
    out = _common.write("extract", {
        "model": args.model, "model_hash": loaded.model_hash,
        "extraction": {"config": "half_mixed", "non_embedding_params_fraction":
                       round(shape.num_params(half, include_embeddings=False) / full_body, 4),
                       "seconds_median": statistics.median(times), "seconds_all": times, "goal_seconds": 1.0},
        "perplexity": {"text": "wikitext2/test.txt", "max_tokens": args.tokens, "window": 512,
                       "note": "sub-networks cut from the original model without training", "rows": rows},
    })
    print(f"extraction of a {rows[-1]['non_embedding_params_fraction']:.0%} sub-network: median {statistics.median(times):.3f} s -> {out}")


if __name__ == "__main__":
    main()
