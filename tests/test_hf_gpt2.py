"""GPT-2's Hugging Face names and shapes (npgpt.io.hf_gpt2): the prefix is the whole mapping, every
name and shape is checked before anything is built, and a tied head is accepted only when tied."""

import numpy as np
import pytest

from npgpt.io.checkpoint import CheckpointError
from npgpt.io.hf_gpt2 import HF_PREFIX, check_hf_shapes, hf_tensors, load_hf_tensors, tensor_shapes
from npgpt.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=8)


def test_the_names_are_the_models_with_the_prefix_and_load_back_unchanged():
    model = GPT(CONFIG, seed=0)
    tensors = hf_tensors(model)
    assert sorted(tensors) == sorted(HF_PREFIX + name for name, _ in model.named_parameters())
    assert {name[len(HF_PREFIX):]: a.shape for name, a in tensors.items()} == tensor_shapes(CONFIG)
    other = load_hf_tensors(GPT(CONFIG, init=False), {**tensors, "lm_head.weight": tensors[HF_PREFIX + "wte.weight"]})
    for (name, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("h.1.mlp.c_fc.bias"), "tensor 'h.1.mlp.c_fc.bias' is missing"),
    (lambda t: t.update({"h.0.attn.c_attn.weight": (8, 8)}), r"has shape \(8, 8\), but config.json implies \(8, 24\)"),
    (lambda t: t.update({"h.2.ln_1.weight": (8,)}), r"unexpected tensors \['h.2.ln_1.weight'\]"),
    (lambda t: t.update({"lm_head.weight": (8, 40)}), r"lm_head.weight has shape \(8, 40\), not wte's \(40, 8\)"),
])
def test_every_name_and_shape_is_checked_and_named(edit, message):
    shapes = dict(tensor_shapes(CONFIG))
    edit(shapes)
    with pytest.raises(CheckpointError, match=message):
        check_hf_shapes(CONFIG, shapes, "model.safetensors")


def test_an_untied_head_is_refused():
    tensors = hf_tensors(GPT(CONFIG, seed=0))
    tensors["lm_head.weight"] = tensors[HF_PREFIX + "wte.weight"] + 1
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        load_hf_tensors(GPT(CONFIG, init=False), tensors)
