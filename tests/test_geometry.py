"""The model's geometry (toolkit.models.geometry): GQA numbers, head-group index maps, meta-device children."""

from __future__ import annotations

import torch

from toolkit.models import geometry
from toolkit.space import ParentShape, SubnetConfig


def test_numbers_of_a_config_and_the_parent_shape_agree():
    from toolkit.models.tiny import llama_tiny_config

    c = llama_tiny_config()  # 4 query heads, 2 kv heads, head_dim 16, hidden 64
    assert geometry.head_dim(c) == 16 and geometry.group_size(c) == 2
    shape = ParentShape.from_hf_config(c)
    assert (shape.head_dim, shape.group_size) == (geometry.head_dim(c), geometry.group_size(c))
    c.head_dim = None  # not set: hidden_size / heads
    assert geometry.head_dim(c) == 64 // 4


def test_head_indices_of_groups_are_their_query_and_kv_rows():
    q, kv = geometry.head_indices(torch.tensor([1]), group=2, head_dim=3)  # kv head 1 <- query heads 2, 3
    assert kv.tolist() == [3, 4, 5] and q.tolist() == [6, 7, 8, 9, 10, 11]
    q, kv = geometry.head_indices(torch.tensor([1, 0]), group=2, head_dim=1)  # in the groups' order
    assert kv.tolist() == [1, 0] and q.tolist() == [2, 3, 0, 1]


def test_meta_child_has_the_subnets_shapes_and_no_storage(tiny):
    child = geometry.meta_child(tiny.config, SubnetConfig((0, 2), (128, 256), (2, 4)))
    assert child.config.model_type == "elastic_llama" and len(child.model.layers) == 2
    a0, a1 = child.model.layers[0].self_attn, child.model.layers[1].self_attn
    assert a0.q_proj.weight.shape == (2 * 16, 64) and a0.k_proj.weight.shape == (16, 64)
    assert a1.o_proj.weight.shape == (64, 4 * 16) and child.model.layers[0].mlp.down_proj.weight.shape == (64, 128)
    assert all(p.is_meta for p in child.parameters())
    uniform = geometry.meta_child(tiny.config, SubnetConfig((0, 1), (128, 128), (2, 2)))
    assert type(uniform).__name__ == "LlamaForCausalLM" and uniform.config.num_key_value_heads == 1
