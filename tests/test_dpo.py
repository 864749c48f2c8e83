"""The DPO loss (npgpt.finetuning.dpo, docs/agent.md eq:dpo-loss): the formula by hand, its gradient in float64,
and a toy preference pair that a few steps of gradient descent learn to prefer."""

import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
from npgpt.autograd.gradcheck import check_gradients
from npgpt.finetuning import dpo
from npgpt.model import GPT, GPTConfig
from npgpt.training.optim import AdamW

logps = st.floats(-30, 0, allow_nan=False)


@given(pc=logps, pr=logps, rc=logps, rr=logps, beta=st.floats(0.01, 2.0))
def test_dpo_loss_is_the_documented_formula(pc, pr, rc, rr, beta):
    # docs/agent.md eq:dpo-loss: -log sigma(beta [(pc - rc) - (pr - rr)])
    z = beta * ((pc - rc) - (pr - rr))
    expected = math.log1p(math.exp(-z)) if z > -30 else -z
    assert float(dpo.dpo_loss(pc, pr, rc, rr, beta=beta).data) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(seed=st.integers(0, 2**16), n=st.integers(1, 4))
def test_dpo_loss_gradient_matches_finite_differences(seed, n):
    # eq:dpo-loss's gradient w.r.t. the policy's log-probabilities; the reference gets none (it is frozen)
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = (rng.normal(-5, 3, n) for _ in range(4))
    check_gradients(lambda a, b: dpo.dpo_loss(a, b, rc, rr, beta=0.5), pc, pr)
    z = 0.5 * ((pc - rc) - (pr - rr))
    a = npgpt.Tensor(pc, requires_grad=True)
    dpo.dpo_loss(a, pr, rc, rr, beta=0.5).backward()
    np.testing.assert_allclose(a.grad, -0.5 / (1 + np.exp(z)) / n, rtol=1e-9, atol=1e-300)


def test_a_toy_preference_pair_is_learned_starting_at_log_2():
    config = GPTConfig(vocab_size=16, block_size=12, n_layer=1, n_head=2, n_embd=16)
    policy = GPT(config, seed=0)
    reference = copy.deepcopy(policy).eval()
    prompt, chosen, rejected = [1, 2, 3], [4, 5, 6], [7, 8, 9]

    def margin_and_loss():
        pc, pr = dpo.response_logprob(policy, prompt, chosen), dpo.response_logprob(policy, prompt, rejected)
        with npgpt.no_grad():
            rc, rr = dpo.response_logprob(reference, prompt, chosen), dpo.response_logprob(reference, prompt, rejected)
        return float((pc - pr).data - (rc - rr).data), dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)

    margin, loss = margin_and_loss()
    assert margin == 0.0 and float(loss.data) == pytest.approx(math.log(2), rel=1e-6)   # policy == reference
    opt = AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(20):
        margin, loss = margin_and_loss()
        loss.backward()
        opt.step()
        opt.zero_grad()
    margin, loss = margin_and_loss()
    assert margin > 1.0 and float(loss.data) < 0.5 * math.log(2)
    # the log-probability that response_logprob sums is the model's own
    with npgpt.no_grad():
        logp = npgpt.F.log_softmax(policy(np.array([prompt + chosen[:-1]]))).numpy()[0]
    direct = sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(chosen))
    assert float(dpo.response_logprob(policy, prompt, chosen).data) == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo.dpo_loss(0.0, 0.0, 0.0, 0.0, beta=0)
