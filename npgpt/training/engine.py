"""One optimizer step, shared by pretraining (``npgpt.training.train``) and fine-tuning (``npgpt.finetuning.finetune``).

Companion of ``docs/training.md`` (section "One step").

A step of either loop is the same five things: set the learning rate; run
forward and backward over the micro-batches, each sharded over CPU threads
(``npgpt.training.parallel``), summing their gradients (eq. 4); clip the global
gradient norm (eq. 11); refuse a non-finite loss or norm before the weights
are touched; update with the optimizer and clear the gradients. The loops
differ only in where batches come from, what they log and how they save,
so those stay in their own modules and the step lives here, once.

Depends on ``npgpt.training.parallel`` and ``npgpt.training.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Optional

from npgpt.autograd import Tensor
from npgpt.training import parallel
from npgpt.training.distributed import OptimizerShard, World
from npgpt.training.mixed_precision import GradScaler
from npgpt.training.optim import Optimizer, clip_grad_norm_with_loss

__all__ = ["TrainingDiverged", "StepResult", "optimizer_step", "choose_workers"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became inf/nan; the message names the step."""


def choose_workers(requested: Optional[int], device: str, dropout: float) -> int:
    """How many threads to shard each batch over: ``requested`` if given (> 0), else one per core.

    Only on the CPU and without dropout: threads would share the Dropout
    generators, and two threads drawing from one generator make the masks
    depend on timing, so a run would not be reproducible.
    """
    if requested:
        return int(requested)
    return parallel.default_workers() if (device == "cpu" and dropout == 0) else 1


class StepResult(NamedTuple):
    """What one optimizer step did: the loss, the gradient norm before clipping, and whether it was skipped."""

    loss: float
    grad_norm: float
    skipped: bool = False      # mixed precision: inf/nan gradients, no update, the loss scale halved


def optimizer_step(optimizer: Optimizer, loss_fn: Callable[..., Tensor], batches: Iterable[Sequence],
                   lr: float, grad_clip: Optional[float] = None, workers: Optional[int] = None,
                   step: Optional[int] = None, scaler: Optional[GradScaler] = None,
                   world: Optional[World] = None, shard: Optional[OptimizerShard] = None) -> StepResult:
    """One optimizer step; returns a :class:`StepResult` (loss, gradient norm before clipping, skipped).

    Sets the learning rate (``optimizer.set_lr``), sums the gradients of
    ``loss_fn(*batch)`` over ``batches`` (each a tuple of arrays whose first
    axis is the batch; each loss already weighted, e.g. by 1/K for K
    micro-batches, eq. 4) with every batch sharded over ``workers`` threads,
    clips the global norm to ``grad_clip`` (eq. 11; ``None``/0: measure
    only), refuses a non-finite loss or norm *before* touching the weights
    (``TrainingDiverged`` naming ``step``), updates and clears the gradients.

    With a ``scaler`` (mixed precision, ``npgpt.training.mixed_precision``) the loss
    is multiplied by ``scaler.scale`` for the backward pass and the gradients
    divided by it before clipping; a non-finite gradient norm then means a
    float16 overflow, not divergence: the step is skipped (no update) and the
    scale halved. A non-finite *loss* is divergence either way.

    With a ``world`` of N ranks (``npgpt.training.distributed``) every batch is the
    *global* batch: this rank computes its rows, weighted by its share of
    them, and the gradients and loss are summed over ranks once per step,
    after the last micro-batch. With a ``shard`` (ZeRO-1), ``optimizer``
    holds only this rank's parameters: gradients are reduce-scattered to
    their owners, the norm is summed over ranks, and after the update the
    weights are all-gathered.
    """
    optimizer.set_lr(lr)
    # Every parameter gets a gradient, also those another rank's optimizer shard updates.
    params = shard.params if shard is not None else [p for group in optimizer.param_groups for p in group["params"]]
    scale = scaler.scale if scaler is not None else 1.0
    many = world is not None and world.size > 1
    loss = 0.0      # on a GPU a 0-d array: the micro-batches' losses add up there, read once with the norm
    for batch in batches:
        weight = scale              # the loss scale, times this rank's share of the global batch
        if many:
            size = batch[0].shape[0]
            rows = world.rows(size)
            batch = tuple(a[rows] for a in batch)
            weight *= (rows.stop - rows.start) / size
            if weight == 0:          # a global batch smaller than the world: this rank sits it out
                continue
        weighted = loss_fn if weight == 1.0 else (lambda *b, w=weight: loss_fn(*b) * w)
        loss = loss + parallel.forward_backward(weighted, batch, params, workers=workers, as_array=True)
    reduce = None
    if many:
        loss = world.sum_floats([float(loss)])[0]
        if shard is not None:
            world.reduce_scatter_grads(shard.params, shard.owners)
            reduce = lambda local: world.sum_floats([local])[0]   # the norm of gradients spread over ranks
        else:
            world.allreduce_grads(params)
    if scaler is not None:
        loss /= scale
        scaler.unscale(params)
    # The step's one copy from a GPU: the loss and the gradient norm, read together.
    norm, loss = clip_grad_norm_with_loss(optimizer.param_groups, grad_clip if grad_clip else None, loss,
                                          reduce=reduce)
    if scaler is not None and math.isfinite(loss) and not math.isfinite(norm):
        optimizer.zero_grad()
        scaler.update(found_inf=True)
        return StepResult(loss, norm, skipped=True)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad()
        raise TrainingDiverged(f"training diverged at step {step}: loss {loss}, gradient norm {norm}; "
                               "the weights were not updated")
    optimizer.step()
    optimizer.zero_grad()
    if many and shard is not None:
        world.allgather_params(shard.params, shard.owners)
    if scaler is not None:
        scaler.update(found_inf=False)
    return StepResult(loss, norm)
