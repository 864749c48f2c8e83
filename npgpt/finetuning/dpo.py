"""Direct preference optimisation (Rafailov et al. 2023): the loss, for what RLHF would add.

Companion of ``docs/agent.md`` (section "What preference tuning adds").
Given a prompt ``x``, a preferred response ``y_w`` and a rejected one
``y_l``, the policy ``pi`` (the model being tuned) and a frozen reference
``pi_ref`` (the SFT model it started from):

    L = -log sigma(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])
                                                                        (docs/agent.md eq:dpo-loss)

The loss is small when the policy raises the preferred response's
likelihood, relative to the reference, more than the rejected one's; ``beta``
sets how far from the reference that may pull it. No reward model and no
sampling: the reward is implicit in the log-ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt.autograd import Tensor, as_tensor

__all__ = ["response_logprob", "dpo_loss"]


def response_logprob(model: Any, prompt: Sequence[int], response: Sequence[int]) -> Tensor:
    """``log p(response | prompt) = sum_t log p(y_t | x, y_<t)``, a scalar Tensor with the model's gradient.

    ``-cross_entropy`` over the response's positions (the prompt's targets
    ignored), times their number: the mean becomes the sum.
    """
    prompt, response = [int(t) for t in prompt], [int(t) for t in response]
    if not prompt or not response:
        raise ValueError("response_logprob needs a non-empty prompt and a non-empty response")
    ids = np.array([prompt + response])
    targets = np.array([[-100] * (len(prompt) - 1) + response])
    return F.cross_entropy(model(ids[:, :-1]), targets) * (-float(len(response)))


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
             beta: float = 0.1) -> Tensor:
    """Mean DPO loss (eq:dpo-loss) over a batch of pairs, from summed response log-probabilities (shape (N,)).

    ``-log sigma(z)`` with ``z = beta (policy_chosen - ref_chosen - policy_rejected + ref_rejected)``,
    computed stably as the binary cross-entropy of the logit ``z`` with target 1.
    Gradient w.r.t. ``policy_chosen``: ``-beta sigma(-z) / N`` (and the opposite for the rejected).
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    pc, pr = as_tensor(policy_chosen), as_tensor(policy_rejected)
    rc, rr = as_tensor(ref_chosen).detach(), as_tensor(ref_rejected).detach()    # the reference is frozen
    z = ((pc - rc) - (pr - rr)) * float(beta)
    z = z.reshape(-1) if z.ndim else z.reshape(1)
    return F.binary_cross_entropy_with_logits(z, np.ones(z.shape, dtype=z.dtype))
