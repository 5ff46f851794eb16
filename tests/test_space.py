import dataclasses
import json

import numpy as np
import pytest

from toolkit.errors import ConfigError
from toolkit.space import ParentShape, SearchSpace, SubnetConfig

SMOL = ParentShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
                   head_dim=64, vocab_size=49152, tie_word_embeddings=True)


def space(order=None):
    return SearchSpace.from_parent(SMOL, layer_order=order or list(range(29, -1, -1)))


def test_default_space_choices():
    s = space()
    assert s.mlp_choices[0] == 384 and s.mlp_choices[-1] == 1536
    assert all(m % 64 == 0 for m in s.mlp_choices)
    assert s.head_choices == (3, 6, 9)  # whole GQA groups of 3
    assert s.depth_choices == tuple(range(15, 31))
    assert s.genome_length == 61


def test_subnet_config_json_round_trip_and_hash():
    cfg = SubnetConfig((0, 2, 5), (512, 1536, 64), (3, 9, 6))
    again = SubnetConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg) and again.key() == cfg.key()
    assert {cfg: 1}[again] == 1
    assert SubnetConfig((0, 2, 5), (512, 1536, 128), (3, 9, 6)).key() != cfg.key()
    with pytest.raises(Exception):
        cfg.mlp = (1, 2, 3)  # frozen


def test_genome_round_trip_on_random_configs():
    s = space()
    rng = np.random.default_rng(0)
    lo, hi = s.genome_bounds()
    for _ in range(200):
        cfg = s.sample(rng)
        assert s.decode(s.encode(cfg)) == cfg


def test_depth_keeps_the_most_important_layers():
    order = [3, 7, 1] + [i for i in range(30) if i not in (3, 7, 1)]
    s = space(order)
    g = s.encode(s.largest())
    g[0] = s.depth_choices.index(15)
    assert set(order[:15]) == set(s.decode(g).layers)
    assert s.smallest().depth == 15 and s.largest() == SMOL.full_config()


def test_num_params_of_the_full_config_matches_smollm2():
    # 134,515,008 is SmolLM2-135M's parameter count (tied embeddings).
    assert SMOL.num_params(SMOL.full_config()) == 134_515_008


@pytest.mark.parametrize(
    "cfg, field",
    [
        (SubnetConfig(tuple(range(30)), (1000,) + (1536,) * 29, (9,) * 30), "mlp[0]"),  # width off the grid
        (SubnetConfig(tuple(range(30)), (1536,) * 30, (9,) * 29 + (4,)), "heads[29]"),  # breaks GQA groups
        (SubnetConfig(tuple(range(30)), (1536,) * 30, (9,) * 29 + (12,)), "heads[29]"),  # more heads than parent
        (SubnetConfig(tuple(range(10)), (1536,) * 10, (9,) * 10), "layers"),  # depth out of range
        (SubnetConfig(tuple(range(31)), (1536,) * 31, (9,) * 31), "layers"),  # layer index out of range
        (SubnetConfig(tuple(range(16)), (1536,) * 16, (9,) * 16), "layers"),  # not the most important 16
    ],
)
def test_bad_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as exc:
        space().validate(cfg, file="cfg.json")
    msg = str(exc.value)
    assert exc.value.field == field and msg.startswith("cfg.json: ") and "\n" not in msg


@pytest.mark.parametrize(
    "text, field",
    [
        ('{"layers": [0], "mlp": [64]}', "heads"),
        ('{"layers": [0], "mlp": [64], "heads": [3], "colour": 1}', "colour"),
        ('{"layers": [1, 0], "mlp": [64, 64], "heads": [3, 3]}', "layers"),
        ('{"layers": [0], "mlp": [-64], "heads": [3]}', "mlp[0]"),
        ('{"layers": [0], "mlp": ["64"], "heads": [3]}', "mlp[0]"),
        ('{"layers": [0, 1], "mlp": [64], "heads": [3, 3]}', "mlp"),
        ('{"layers": [0], "mlp": [64], "heads": [3], "version": 7}', "version"),
        ('{"layers": [0], "mlp": [64], ', "line 1"),
    ],
)
def test_malformed_subnet_json(text, field):
    with pytest.raises(ConfigError) as exc:
        SubnetConfig.from_json(text, file="x.json")
    assert exc.value.field == field and exc.value.file == "x.json"


def test_pareto_entry_wrapper_is_accepted():
    cfg = SubnetConfig((0,), (64,), (3,))
    assert SubnetConfig.from_json(json.dumps({"config": cfg.to_dict(), "objectives": {}})) == cfg


def test_space_json_round_trip():
    s = space()
    assert SearchSpace.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_space_rejects_head_choices_breaking_groups():
    with pytest.raises(ConfigError) as exc:
        SearchSpace(SMOL, (1536,), (4, 9), (30,), tuple(range(30)))
    assert exc.value.field == "head_choices"


@pytest.mark.parametrize(
    "cfg, field, problem",
    [
        (SubnetConfig((0, 1), (1536, 1536), (9, 12)), "heads[1]", "12 heads exceed the parent layer 1's 9"),
        (SubnetConfig((0, 1), (1536, 1536), (9, 4)), "heads[1]", "4 query heads break the GQA groups of 3"),
        (SubnetConfig((0, 1), (1600, 1536), (9, 9)), "mlp[0]", "width 1600 exceeds the parent layer 0's 1536"),
        (SubnetConfig((0, 30), (1536, 1536), (9, 9)), "layers", "layer index 30 out of range for a 30-layer parent"),
    ],
)
def test_parent_shape_check_is_the_one_fit_validator(cfg, field, problem):
    with pytest.raises(ConfigError) as exc:
        SMOL.check(cfg, "cfg.json")
    assert (exc.value.field, exc.value.problem.split(" (")[0], exc.value.file) == (field, problem, "cfg.json")
    with pytest.raises(ConfigError) as again:  # the space's validator starts from the same check
        space().validate(cfg, "cfg.json")
    assert again.value.field == field
    assert SMOL.check(SubnetConfig((0, 29), (64, 1536), (3, 9))) is not None  # any width/group count that fits


def test_extract_and_eval_use_the_same_fit_check(tiny):
    from toolkit.elastic import check_fits, parent_shape

    cfg = SubnetConfig((0, 1), (256, 256), (4, 6))  # 6 heads > the tiny parent's 4
    with pytest.raises(ConfigError) as a:
        check_fits(tiny, cfg)
    with pytest.raises(ConfigError) as b:
        parent_shape(tiny).check(cfg)
    assert str(a.value) == str(b.value) == "heads[1]: 6 heads exceed the parent layer 1's 4"


def test_binary_and_duplicate_key_config_files_are_one_line_errors(tmp_path):
    binary = tmp_path / "cfg.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError) as exc:
        SubnetConfig.load(str(binary))
    assert exc.value.file == str(binary) and "UTF-8" in str(exc.value) and "\n" not in str(exc.value)
    dup = tmp_path / "dup.json"
    dup.write_text('{"layers": [0], "mlp": [64], "heads": [3], "heads": [6]}')
    with pytest.raises(ConfigError) as exc:
        SubnetConfig.load(str(dup))
    assert (exc.value.field, exc.value.file) == ("heads", str(dup)) and "twice" in exc.value.problem


@pytest.mark.parametrize("field, value", [("num_layers", True), ("hidden_size", "576"), ("tie_word_embeddings", 1)])
def test_parent_shape_refuses_wrong_types(field, value):
    d = {**dataclasses.asdict(SMOL), field: value}
    with pytest.raises(ConfigError) as exc:
        ParentShape.from_dict(d, "p.json")
    assert exc.value.field == f"shape.{field}" and exc.value.file == "p.json"


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(mlp_choices=5), "mlp_choices"),
    (lambda d: d["parent"].update(num_heads="9"), "parent.num_heads"),
    (lambda d: d.pop("layer_order"), "layer_order"),
    (lambda d: d.update(head_choices=[4, 9]), "head_choices"),
])
def test_space_from_dict_names_the_bad_field(edit, field):
    d = json.loads(json.dumps(space().to_dict()))
    edit(d)
    with pytest.raises(ConfigError) as exc:
        SearchSpace.from_dict(d, "run.json")
    assert (exc.value.field, exc.value.file) == (field, "run.json")
