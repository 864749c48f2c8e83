"""Modules: parameter registration and naming, state dicts, modes, devices, the basic layers."""

import json

import numpy as np
import pytest

import npgpt.functional as F
from npgpt import backend, nn
from npgpt.autograd import Tensor


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4, rng=np.random.default_rng(0))
        self.norm = nn.LayerNorm(4)
        self.layers = nn.ModuleList([nn.Linear(4, 4, bias=False), nn.Linear(4, 2)])
        self.scale = nn.Parameter(np.ones(2, np.float32))

    def forward(self, x):
        x = self.norm(self.first(x))
        for layer in self.layers:
            x = layer(x)
        return x * self.scale


def test_parameter_is_a_tensor_that_requires_grad():
    p = nn.Parameter(np.zeros(3, np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and p.is_leaf


def test_named_parameters_use_dotted_attribute_paths_in_assignment_order():
    names = [name for name, _ in TwoLayer().named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "norm.weight", "norm.bias",
                     "layers.0.weight", "layers.1.weight", "layers.1.bias"]


def test_num_parameters_counts_shared_parameters_once():
    m = TwoLayer()
    assert m.num_parameters() == 2 + 3 * 4 + 4 + 4 + 4 + 16 + 8 + 2
    m.layers.append(m.layers[0])           # the same Linear twice: its weight counted once
    assert m.num_parameters() == 2 + 3 * 4 + 4 + 4 + 4 + 16 + 8 + 2


def test_reassigning_an_attribute_replaces_the_registration():
    m = TwoLayer()
    m.scale = None
    assert "scale" not in dict(m.named_parameters())


def test_module_without_super_init_fails_clearly():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1, np.float32))

    with pytest.raises(RuntimeError, match="super"):
        Broken()


def test_state_dict_round_trip_copies_values_in_place():
    a, b = TwoLayer(), TwoLayer()
    for p in a.parameters():
        p.data[...] = np.random.default_rng(1).standard_normal(p.shape)
    before = [id(p.data) for p in b.parameters()]
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)
    assert [id(p.data) for p in b.parameters()] == before     # optimizers keep pointing at the same arrays
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_names_missing_unexpected_and_mismatched_keys():
    m = TwoLayer()
    sd = m.state_dict()
    del sd["norm.bias"]
    sd["extra.weight"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['norm.bias'\].*unexpected keys \['extra.weight'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["norm.bias"] and unexpected == ["extra.weight"]
    bad = m.state_dict()
    bad = {k: v.copy() for k, v in bad.items()}
    bad["first.weight"] = np.zeros((4, 3), np.float32)
    original = m.first.bias.data.copy()
    bad["first.bias"] = original + 1
    with pytest.raises(ValueError, match=r"first.weight has shape \(4, 3\).*\(3, 4\)"):
        m.load_state_dict(bad)
    np.testing.assert_array_equal(m.first.bias.data, original)    # nothing written when anything is wrong


def test_train_eval_reaches_every_submodule():
    m = TwoLayer()
    assert m.training and m.layers[1].training
    m.eval()
    assert not any(mod.training for _, mod in m.named_modules())
    m.train()
    assert all(mod.training for _, mod in m.named_modules())


def test_zero_grad_and_backward_reach_all_parameters():
    m = TwoLayer()
    m(np.ones((2, 3), np.float32)).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_to_cpu_keeps_parameter_objects_and_unknown_device_fails():
    m = TwoLayer()
    params = m.parameters()
    assert m.to("cpu") is m and m.parameters() == params and m.device == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


@pytest.mark.gpu
def test_to_cuda_moves_parameters_in_place():
    if not backend.cuda_available():
        pytest.skip("no GPU")
    m = TwoLayer()
    p = m.first.weight
    m.to("cuda")
    assert m.first.weight is p and p.device == "cuda"
    out = m(backend.to_device(np.ones((2, 3), np.float32), "cuda"))
    assert out.device == "cuda"


def test_linear_is_xW_plus_b_with_weight_in_out():
    # docs/model.md eq:affine: y = x W + b, W stored (in, out)
    lin = nn.Linear(3, 5, rng=np.random.default_rng(0))
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (5,)
    lin.bias.data[...] = np.arange(5)
    x = np.random.default_rng(1).standard_normal((2, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(lin(x).data, x @ lin.weight.data + lin.bias.data, rtol=1e-6)
    assert nn.Linear(3, 5, bias=False).bias is None


def test_initialisation_statistics():
    lin = nn.Linear(256, 512, std=0.02)
    assert abs(lin.weight.data.std() - 0.02) < 0.001 and np.all(lin.bias.data == 0)
    ln = nn.LayerNorm(8)
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)


def test_embedding_looks_up_rows():
    # docs/model.md eq:embedding: y = W[ids]
    emb = nn.Embedding(10, 4)
    ids = np.array([[1, 9, 1]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])


def test_layer_norm_module_normalises():
    # docs/model.md eq:layer-norm
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32) * 5 + 2
    y = nn.LayerNorm(16)(x).data
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-3)


def test_dropout_is_seeded_scaled_and_off_in_eval():
    x = Tensor(np.ones((200, 50), np.float32))
    a, b = nn.Dropout(0.3, seed=7), nn.Dropout(0.3, seed=7)
    ya, yb = a(x).data, b(x).data
    np.testing.assert_array_equal(ya, yb)                      # same seed, same mask
    assert set(np.unique(ya)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((ya == 0).mean() - 0.3) < 0.02                  # about p of the units dropped
    assert not np.array_equal(a(x).data, ya)                   # the generator moves on
    a.eval()
    assert a(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nn.Dropout(1.0)


def test_dropout_rng_state_round_trips_through_json():
    x = Tensor(np.ones((6, 7), np.float32))
    a = nn.Dropout(0.5, seed=11)
    assert a.get_rng_state() is None                           # never used
    a(x), a(x), a(Tensor(np.ones((3,), np.float32)))
    state = json.loads(json.dumps(a.get_rng_state()))
    assert state == {"seed": 11, "draws": 3}                   # O(1): a seed and a count, nothing to replay
    expected = [a(x).data for _ in range(3)]
    b = nn.Dropout(0.5, seed=99)
    b.set_rng_state(state)
    for mask in expected:
        np.testing.assert_array_equal(b(x).data, mask)
    b.set_rng_state(None)                                      # from the seed again
    np.testing.assert_array_equal(b(x).data, nn.Dropout(0.5, seed=11)(x).data)
    with pytest.raises(ValueError, match="get_rng_state"):
        b.set_rng_state({"state": 1})
    with pytest.raises(ValueError, match="draws must be a whole number"):
        b.set_rng_state({"seed": 1, "draws": -2})


def test_dropout_mask_n_is_philox_of_the_seed_and_n():
    """docs/gpu.md eq:philox-round: mask n keeps unit i where uniform_i(key=seed, stream=n) >= p, scaled by 1/(1-p)."""
    from npgpt.backend import philox

    x = Tensor(np.ones((3, 5), np.float32))
    a = nn.Dropout(0.25, seed=2 ** 40 + 7)
    masks = [a(x).data for _ in range(3)]
    for n, mask in enumerate(masks):
        keep = philox.uniform(15, 2 ** 40 + 7, n).reshape(3, 5) >= 0.25
        np.testing.assert_array_equal(mask, keep.astype(np.float32) * np.float32(1 / 0.75))


def test_dropout_states_of_the_replaying_generator_resume_by_their_count():
    # Checkpoints written before the counter-based generator recorded the draws; their count is the counter.
    x = Tensor(np.ones((2, 2), np.float32))
    a = nn.Dropout(0.5, seed=3)
    a.set_rng_state({"seed": 3, "generators": {"numpy": {"draws": [[4, "float32", 2], [9, "float32", 1]],
                                                         "bit_generator": {}}}})
    assert a.get_rng_state() == {"seed": 3, "draws": 3}
    b = nn.Dropout(0.5, seed=3)
    for _ in range(3):
        b(x)
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_dropout_without_a_seed_draws_entropy_once_and_can_be_replayed():
    x = Tensor(np.ones((4, 9), np.float32))
    a = nn.Dropout(0.3)
    assert isinstance(a.seed, int) and a.seed != nn.Dropout(0.3).seed
    a(x)
    b = nn.Dropout(0.3)
    b.set_rng_state(a.get_rng_state())
    np.testing.assert_array_equal(b(x).data, a(x).data)


def test_module_list_rejects_non_modules_and_call_dispatches_to_forward():
    with pytest.raises(TypeError, match="ModuleList holds Modules"):
        nn.ModuleList([1])
    with pytest.raises(NotImplementedError):
        nn.Module()(1)
    assert "Linear(3, 4, bias=True)" in repr(TwoLayer())


def test_linear_matches_functional():
    lin = nn.Linear(4, 2)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(lin(x).data, F.linear(Tensor(x), lin.weight, lin.bias).data)
