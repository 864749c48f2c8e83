"""The optimizer step (npgpt.training.engine.optimizer_step; docs/training.md, "One step, two loops"):
a step split over micro-batches and worker threads has the loss and gradient of one batch of all
of them (docs/training.md eq:grad-accumulation), here with supervised fine-tuning's loss, whose weights are counts of targets."""

import numpy as np
import pytest

import npgpt
from npgpt.finetuning import conversations as conv
from npgpt.finetuning.conversations import IGNORE_INDEX
from npgpt.finetuning.sft import sft_loss, step_loss
from npgpt.training import engine
from npgpt.training.optim import AdamW


def test_a_step_averages_over_every_target_of_every_micro_batch_and_shard():
    """step_loss: split over micro-batches and threads, the step's loss and gradient are eq:sft-loss's over the
    whole step (rows with many targets weigh more), as computed on one concatenated batch."""
    rng = np.random.default_rng(0)
    config = npgpt.GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    batches = []
    for _ in range(2):
        x = rng.integers(0, 13, (4, 6))
        y = np.where(rng.random((4, 6)) < 0.4, rng.integers(0, 13, (4, 6)), IGNORE_INDEX)
        y[:, -1] = 2                                             # every row has a target
        batches.append((x, y))
    trained = sum(conv.count_trained(y) for _, y in batches)

    def run(loss_fn, step_batches, workers):
        model = npgpt.GPT(config, seed=1)
        optimizer = AdamW([{"params": list(model.parameters()), "weight_decay": 0.0}], lr=1e-2)
        grads = {}
        original = optimizer.step

        def capture():
            grads.update({n: p.grad.copy() for n, p in model.named_parameters()})
            original()
        optimizer.step = capture
        result = engine.optimizer_step(optimizer, loss_fn(model), step_batches, 1e-2, workers=workers)
        return result.loss, grads

    sharded = run(lambda m: step_loss(m, 4, trained), batches, workers=2)
    whole_x = np.concatenate([b[0] for b in batches])
    whole_y = np.concatenate([b[1] for b in batches])
    single = run(lambda m: (lambda x, y: sft_loss(m, x, y)), [(whole_x, whole_y)], workers=1)
    assert sharded[0] == pytest.approx(single[0], rel=1e-5)
    for name in single[1]:
        np.testing.assert_allclose(sharded[1][name], single[1][name], rtol=2e-4, atol=1e-6, err_msg=name)
