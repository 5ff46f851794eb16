import pytest

from toolkit.baselines import BASELINES, layer_drop, matched, uniform_mlp
from toolkit.space import ParentShape, SearchSpace

SMOL = ParentShape(30, 576, 1536, 9, 3, 64, 49152, True)
SPACE = SearchSpace.from_parent(SMOL, layer_order=[0, 29, 1, 24, 23] + [i for i in range(30) if i not in (0, 29, 1, 24, 23)])


def test_layer_drop_keeps_most_influential_layers():
    cfg = layer_drop(SPACE, 5)
    assert cfg.layers == (0, 1, 23, 24, 29) and set(cfg.mlp) == {1536} and set(cfg.heads) == {9}


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.9])
def test_matched_parameter_counts(method, fraction):
    full = SMOL.num_params(SMOL.full_config(), include_embeddings=False)
    cfg = matched(SPACE, method, fraction * full)
    got = SMOL.num_params(cfg, include_embeddings=False) / full
    tol = 1 / 30 if method == "layer_drop" else 0.01  # one layer's worth vs. an 8-channel step
    assert abs(got - fraction) <= tol
    if method == "uniform_mlp":
        assert cfg.depth == 30 and len(set(cfg.mlp)) == 1
    else:
        assert set(cfg.mlp) == {1536}


def test_uniform_mlp_shape():
    cfg = uniform_mlp(SPACE, 768)
    assert cfg.depth == 30 and cfg.mlp == (768,) * 30
