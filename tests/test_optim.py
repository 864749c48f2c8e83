"""Optimizers, clipping and the schedule against their formulas
(docs/training.md eq:adam-first-moment, eq:adam-second-moment, eq:adam-bias-correction,
docs/training.md eq:decoupled-weight-decay, eq:adam-update, eq:sgd-momentum, eq:grad-clip, eq:lr-schedule),
and against PyTorch where it is installed."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npgpt import nn
from npgpt.model import GPT, GPTConfig
from npgpt.training.optim import SGD, AdamW, clip_grad_norm, configure_optimizer, cosine_schedule, param_groups


def _params(rng, shapes, dtype=np.float64):
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _reference_adamw(thetas, grads_per_step, lr, betas, eps, wds):
    """docs/training.md eq:adam-first-moment, eq:adam-second-moment, eq:adam-bias-correction,
    docs/training.md eq:decoupled-weight-decay and eq:adam-update, written out literally in float64."""
    thetas = [t.copy() for t in thetas]
    m = [np.zeros_like(t) for t in thetas]
    v = [np.zeros_like(t) for t in thetas]
    b1, b2 = betas
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g                     # eq:adam-first-moment
            v[i] = b2 * v[i] + (1 - b2) * g * g                 # eq:adam-second-moment
            m_hat = m[i] / (1 - b1 ** t)                        # eq:adam-bias-correction
            v_hat = v[i] / (1 - b2 ** t)
            thetas[i] = thetas[i] - lr * wds[i] * thetas[i]     # eq:decoupled-weight-decay
            thetas[i] = thetas[i] - lr * m_hat / (np.sqrt(v_hat) + eps)   # eq:adam-update
    return thetas


def test_adamw_matches_its_equations_in_float64():
    # docs/training.md eq:adam-first-moment, eq:adam-second-moment, eq:adam-bias-correction,
    # docs/training.md eq:decoupled-weight-decay and eq:adam-update
    rng = np.random.default_rng(0)
    params = _params(rng, [(3, 4), (4,), (2, 2, 3)])
    start = [p.data.copy() for p in params]
    groups = [{"params": params[:1], "weight_decay": 0.3}, {"params": params[1:], "weight_decay": 0.0}]
    opt = AdamW(groups, lr=0.05, betas=(0.8, 0.9), eps=1e-6)
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    expected = _reference_adamw(start, grads, 0.05, (0.8, 0.9), 1e-6, [0.3, 0.0, 0.0])
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-13, atol=1e-15)


@given(lr=st.floats(1e-4, 1.0), wd=st.floats(0.0, 0.5), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.999),
       seed=st.integers(0, 2 ** 16))
def test_adamw_first_step_is_decay_plus_sign_step(lr, wd, beta1, beta2, seed):
    # At t = 1 bias correction makes m_hat = g and v_hat = g^2 (docs/training.md eq:adam-bias-correction),
    # so docs/training.md eq:decoupled-weight-decay, eq:adam-update
    # give theta_1 = theta_0 (1 - lr wd) - lr g / (|g| + eps), whatever the betas are.
    rng = np.random.default_rng(seed)
    (p,) = _params(rng, [(5, 3)])
    theta0 = p.data.copy()
    g = rng.standard_normal(p.shape)
    p.grad = g.copy()
    AdamW([p], lr=lr, betas=(beta1, beta2), eps=1e-8, weight_decay=wd).step()
    np.testing.assert_allclose(p.data, theta0 * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8), rtol=1e-10, atol=1e-12)


def test_weight_decay_is_decoupled_from_the_gradient():
    # docs/training.md eq:decoupled-weight-decay: with a zero gradient the moments stay 0 and only the decay acts, exactly.
    rng = np.random.default_rng(1)
    (p,) = _params(rng, [(4, 4)])
    theta0 = p.data.copy()
    opt = AdamW([p], lr=0.1, weight_decay=0.2)
    for _ in range(3):
        p.grad = np.zeros_like(p.data)
        opt.step()
    np.testing.assert_allclose(p.data, theta0 * (1 - 0.1 * 0.2) ** 3, rtol=1e-14)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    params = _params(rng, [(8, 6), (6,)], dtype=np.float32)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = AdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
                lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    topt = torch.optim.AdamW([{"params": tparams[:1], "weight_decay": 0.1},
                              {"params": tparams[1:], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(10):
        for p, tp in zip(params, tparams):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad, tp.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_with_momentum_matches_its_equation_and_torch():
    # docs/training.md eq:sgd-momentum
    rng = np.random.default_rng(3)
    (p,) = _params(rng, [(3, 3)])
    theta, buf = p.data.copy(), None
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [rng.standard_normal(p.shape) for _ in range(4)]
    for g in grads:
        p.grad = g.copy()
        opt.step()
        g2 = g + 0.01 * theta
        buf = g2 if buf is None else 0.9 * buf + g2
        theta = theta - 0.1 * buf
    np.testing.assert_allclose(p.data, theta, rtol=1e-13)
    torch = pytest.importorskip("torch")
    (q,) = _params(np.random.default_rng(3), [(3, 3)])
    tq = torch.tensor(q.data.copy(), requires_grad=True)
    topt = torch.optim.SGD([tq], lr=0.1, momentum=0.9, weight_decay=0.01)
    for g in grads:
        tq.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(p.data, tq.detach().numpy(), rtol=1e-12)


def test_updates_happen_in_place_and_skip_parameters_without_gradients():
    rng = np.random.default_rng(4)
    a, b = _params(rng, [(2, 3), (3,)], dtype=np.float32)
    array_a, before_b = a.data, b.data.copy()
    opt = AdamW([a, b], lr=0.1)
    a.grad = np.ones_like(a.data)
    opt.step()
    # These small parameters are updated through one flat buffer per group (speed.flat_optimizer): the
    # first step moves the weight into it, a view of the same shape and type; later steps keep that array.
    assert a.data.shape == array_a.shape and a.data.dtype == np.float32 and a.data.base is not None
    moved = a.data
    a.grad = np.ones_like(a.data)
    opt.step()
    assert a.data is moved                                        # updated in place from then on
    np.testing.assert_array_equal(b.data, before_b)               # b had no gradient: untouched
    assert "param1" not in opt.state
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_param_groups_decay_only_the_linear_matrices():
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(decay["names"]) == sorted(f"h.{i}.{layer}.weight" for i in range(2)
                                            for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "h.0.ln_1.weight",
            "h.1.attn.c_attn.bias"} <= set(no_decay["names"])
    assert len(decay["names"]) + len(no_decay["names"]) == len(list(model.named_parameters()))
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_state_dict_round_trip_continues_exactly():
    rng = np.random.default_rng(5)
    shapes = [(4, 3), (3,)]
    a_params = _params(rng, shapes, dtype=np.float32)
    b_params = [nn.Parameter(p.data.copy()) for p in a_params]
    a = AdamW([("w", a_params[0]), ("b", a_params[1])], lr=1e-2)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    for g in grads[:3]:
        for p, gi in zip(a_params, g):
            p.grad = gi.copy()
        a.step()
    state = a.state_dict()
    json.dumps({k: v for k, v in state.items() if k != "state"})     # everything but the arrays is JSON
    for p, q in zip(a_params, b_params):
        q.data[...] = p.data
    b = AdamW([("w", b_params[0]), ("b", b_params[1])], lr=1e-2)
    b.load_state_dict(state)
    assert b.step_count == 3 and b.state["w"]["step"] == 3
    for g in grads[3:]:
        for p, q, gi in zip(a_params, b_params, g):
            p.grad, q.grad = gi.copy(), gi.copy()
        a.step()
        b.step()
    for p, q in zip(a_params, b_params):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_refuses_other_parameters():
    rng = np.random.default_rng(6)
    (p,) = _params(rng, [(2, 2)])
    opt = AdamW([("w", p)])
    p.grad = np.ones((2, 2))
    opt.step()
    (q,) = _params(rng, [(3, 2)])
    with pytest.raises(ValueError, match="shape"):
        AdamW([("w", q)]).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="names differ"):
        AdamW([("v", p)]).load_state_dict(opt.state_dict())


def test_bad_settings_raise():
    (p,) = _params(np.random.default_rng(7), [(2,)])
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="twice"):
        AdamW([p, p])


def test_clip_grad_norm_rescales_to_the_global_norm():
    # docs/training.md eq:grad-clip
    rng = np.random.default_rng(8)
    params = _params(rng, [(3, 4), (5,)])
    grads = [rng.standard_normal(p.shape) * 10 for p in params]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    assert clip_grad_norm(params, 1.0) == pytest.approx(total, rel=1e-12)
    clipped = math.sqrt(sum(float((p.grad * p.grad).sum()) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, grads):                      # same direction, shorter
        np.testing.assert_allclose(p.grad, g * (1.0 / (total + 1e-6)), rtol=1e-12)
    before = [p.grad.copy() for p in params]
    assert clip_grad_norm(params, 5.0) == pytest.approx(1.0, rel=1e-5)   # under the cap: untouched
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.grad, b)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    params = _params(rng, [(6, 7), (7,)], dtype=np.float32)
    tparams = []
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
        t = torch.tensor(p.data.copy(), requires_grad=True)
        t.grad = torch.from_numpy(p.grad.copy())
        tparams.append(t)
    norm = clip_grad_norm(params, 0.5)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 0.5)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_reports_non_finite_norms_without_scaling():
    (p,) = _params(np.random.default_rng(10), [(3,)])
    p.grad = np.array([1.0, np.inf, 0.0])
    assert math.isinf(clip_grad_norm([p], 1.0))
    assert p.grad[0] == 1.0


def test_cosine_schedule_values():
    # docs/training.md eq:lr-schedule
    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 110
    values = [cosine_schedule(t, total, lr, warmup, min_lr) for t in range(total + 5)]
    assert values[0] == pytest.approx(lr / warmup)
    assert values[warmup - 1] == pytest.approx(lr)                       # warmup ends at the peak
    assert values[warmup] == pytest.approx(lr)                           # cosine starts at the peak
    assert values[warmup + 50] == pytest.approx((lr + min_lr) / 2)       # half way: the mean
    assert values[total] == min_lr and values[-1] == min_lr
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1:]))   # then never increases
    for t in (17, 63, 99):
        expected = min_lr + 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) * (lr - min_lr)
        assert values[t] == pytest.approx(expected, rel=1e-15)
    assert cosine_schedule(0, 10, 1.0, 0, 0.0) == 1.0                    # no warmup
    with pytest.raises(ValueError, match="warmup"):
        cosine_schedule(0, 10, 1.0, 11)
    with pytest.raises(ValueError, match="min_lr"):
        cosine_schedule(0, 10, 1.0, 0, 2.0)


def test_a_step_in_blocks_equals_the_step_over_whole_arrays(monkeypatch):
    # docs/training.md eq:adam-first-moment, eq:adam-second-moment, eq:adam-bias-correction,
    # docs/training.md eq:decoupled-weight-decay, eq:adam-update are elementwise: cutting the parameters into
    # blocks shared by threads
    # (npgpt.training.optim.BLOCK) must give bit-for-bit the update of whole arrays, strided parameters included.
    import npgpt.training.optim as optim

    rng = np.random.default_rng(0)
    shapes = [(37, 11), (5,), (300,), (16, 16)]

    def run(block):
        monkeypatch.setattr(optim, "BLOCK", block)
        params = [nn.Parameter(data.copy()) for data in datas]
        params[3].data = params[3].data.T            # a strided parameter: updated whole
        opt = optim.AdamW([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
                          lr=1e-2)
        for step in range(3):
            for p, g in zip(params, grads[step]):
                p.grad = g
            opt.step()
        return [p.data.copy() for p in params]

    datas = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    whole = run(2**30)
    for block in (1, 7, 64):
        for a, b in zip(run(block), whole):
            assert np.array_equal(a, b)


# --------------------------------------------------- flat buffers (the GPU path, on the stand-in)
def _model_and_grads(seed=0):
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8), seed=seed)
    rng = np.random.default_rng(seed)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in model.parameters()] for _ in range(4)]
    return model, grads


def _steps(model, grads, device, between=None):
    """Three AdamW steps (clipped at 0.5) with the given gradients; returns the weights and one moment."""
    from npgpt import backend
    from npgpt.training.optim import clip_grad_norm_with_loss

    model.to(device)
    opt = configure_optimizer(model, lr=0.1, weight_decay=0.1)
    for k, step_grads in enumerate(grads[:3]):
        for p, g in zip(model.parameters(), step_grads):
            p.grad = backend.to_device(g, device)
        flat = opt.flat_grads()
        clip_grad_norm_with_loss(opt.param_groups, 0.5, None, grads=flat)
        opt.step()
        opt.zero_grad()
        if between is not None:
            opt = between(k, model, opt) or opt
    return [backend.to_numpy(p.data) for p in model.parameters()], opt


@pytest.mark.gpu
def test_the_flat_gpu_step_updates_as_the_cpu_step_does(cuda):
    """One kernel per pass over each group's buffer: the weights as the per-parameter CPU step makes them."""
    model, grads = _model_and_grads()
    on_cpu, _ = _steps(model, grads, "cpu")
    model, _ = _model_and_grads()
    on_gpu, opt = _steps(model, grads, cuda)
    for a, b in zip(on_cpu, on_gpu):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)      # the norm's sum is ordered otherwise
    assert len(opt._flat) == 2                                       # decay and no-decay: one layout each
    layout = next(iter(opt._flat.values()))
    assert all(p.data is views[0] for p, views in zip(layout.params, layout.views))


@pytest.mark.gpu
def test_weights_replaced_between_steps_are_laid_out_again(cuda):
    """A checkpoint load (p.data replaced), load_state_dict, a resumed optimizer: the flat layout follows."""
    from npgpt import backend

    model, grads = _model_and_grads()
    reference, _ = _steps(model, grads, cuda)
    saved = {}

    def interrupt(k, model, opt):
        if k == 0:                     # weights and state to the host and back, as a resumed run does
            saved.update(weights=[backend.to_numpy(p.data).copy() for p in model.parameters()],
                         state=opt.state_dict())
            for p, w in zip(model.parameters(), saved["weights"]):
                p.data = backend.to_device(w, cuda)
            fresh = configure_optimizer(model, lr=0.1, weight_decay=0.1)
            fresh.load_state_dict(saved["state"])
            return fresh
        for p in model.parameters():   # a load into the same optimizer's parameters: new arrays, same numbers
            p.data = p.data.copy()
        return None

    model, _ = _model_and_grads()
    resumed, _ = _steps(model, grads, cuda, between=interrupt)
    for a, b in zip(reference, resumed):
        assert a.tobytes() == b.tobytes()


@pytest.mark.gpu
def test_flat_gradients_are_views_that_clipping_scales(cuda):
    from npgpt import backend
    from npgpt.training.optim import clip_grad_norm_with_loss

    model, grads = _model_and_grads()
    _steps(model, grads[:1], cuda)                                   # the layout exists
    opt = configure_optimizer(model)
    for p, g in zip(model.parameters(), grads[3]):
        p.grad = backend.to_device(g, cuda)
    flat = opt.flat_grads()
    assert flat is not None and sum(f.size for f in flat) == sum(p.size for p in model.parameters())
    expected = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads[3]))
    norm, _ = clip_grad_norm_with_loss(opt.param_groups, 1.0, None, grads=flat)
    assert norm == pytest.approx(expected, rel=1e-5)
    after = math.sqrt(sum(float((backend.to_numpy(p.grad).astype(np.float64) ** 2).sum()) for p in model.parameters()))
    assert after == pytest.approx(1.0, rel=1e-5)                     # every p.grad was clipped through its view


def test_the_cpu_lays_small_parameters_out_flat_and_keeps_large_ones_apart_with_the_same_steps(monkeypatch):
    """speed.flat_optimizer: small parameters (the mean at most FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS) go through one
    flat buffer per group, in blocks on both cores; larger ones parameter by parameter. The same updates."""
    from npgpt.backend import speed

    model, grads = _model_and_grads()
    flat, opt = _steps(model, grads, "cpu")
    assert len(opt._flat) == 2 and opt.flat_grads() is None          # laid out; no gradients held after zero_grad
    layout = next(iter(opt._flat.values()))
    assert all(p.data is views[0] for p, views in zip(layout.params, layout.views))
    monkeypatch.setattr(speed, "FLAT_OPTIMIZER_MAX_MEAN_ELEMENTS", 0)
    model, grads = _model_and_grads()      # fresh gradients: clipping on the CPU scales the arrays it is given
    apart, opt = _steps(model, grads, "cpu")
    assert opt._flat == {}
    for a, b in zip(flat, apart):
        assert a.tobytes() == b.tobytes()      # elementwise updates, and the CPU clips per parameter either way


@pytest.mark.gpu
def test_loss_scaling_unscales_the_flat_buffers_exactly(cuda):
    """A power-of-two loss scale, undone on each group's buffer: the steps equal the unscaled ones bit for bit."""
    from npgpt import backend
    from npgpt.training import engine
    from npgpt.training.mixed_precision import NO_LOSS_SCALING, GradScaler

    def train(scaler):
        model, _ = _model_and_grads()
        model.to(cuda)
        opt = SGD(param_groups(model), lr=0.1, momentum=0.9)      # an update proportional to the gradient
        tokens = np.random.default_rng(1).integers(0, 20, (2, 9))
        for step in range(3):
            engine.optimizer_step(opt, model.loss, [(tokens[:, :-1], tokens[:, 1:])], 0.1, None, workers=1,
                                  step=step + 1, scaler=scaler)
        return [backend.to_numpy(p.data).tobytes() for p in model.parameters()]

    assert train(GradScaler(init_scale=2.0 ** 10)) == train(NO_LOSS_SCALING)
