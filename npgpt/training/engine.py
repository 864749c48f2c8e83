"""One optimizer step, shared by pretraining (``npgpt.training.train``) and fine-tuning (``npgpt.finetuning.finetune``).

Companion of ``docs/training.md`` (section "One step").

A step of either loop is nanoGPT's six statements: set the learning rate;
run forward and backward over the micro-batches, each sharded over CPU
threads (``npgpt.training.parallel``), summing their gradients (eq:grad-accumulation);
unscale them (mixed precision); clip the global gradient norm (eq:grad-clip),
refusing a non-finite loss or norm before the weights are touched; update
with the optimizer; clear the gradients. What mixed precision and several
processes add sits behind two small objects whose defaults do nothing: a
``LossScaler`` (``npgpt.training.mixed_precision``) and a ``ProcessGroup``
(``npgpt.training.distributed``). The loops differ only in where batches
come from, what they log and how they save, so those stay in their own
modules and the step lives here, once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import NamedTuple, Optional

from npgpt import nn
from npgpt.autograd import Tensor
from npgpt.training import parallel
from npgpt.training.distributed import SINGLE_PROCESS, ProcessGroup
from npgpt.training.mixed_precision import NO_LOSS_SCALING, LossScaler
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
                   step: Optional[int] = None, scaler: LossScaler = NO_LOSS_SCALING,
                   group: ProcessGroup = SINGLE_PROCESS) -> StepResult:
    """One optimizer step; returns a :class:`StepResult` (loss, gradient norm before clipping, skipped).

    nanoGPT's six statements: set the learning rate; forward and backward
    over ``batches`` (each a tuple of arrays whose first axis is the batch,
    each loss already weighted, e.g. 1/K for K micro-batches, eq:grad-accumulation), every
    batch sharded over ``workers`` threads; unscale; clip the global norm to
    ``grad_clip`` (eq:grad-clip; ``None``/0: measure only); step; zero the
    gradients. A non-finite loss or norm raises ``TrainingDiverged`` (naming
    ``step``) before the weights are touched. With ``step``, dropout masks are
    keyed by (step, micro-batch) (``npgpt.nn.dropout_key``).

    ``scaler`` (``npgpt.training.mixed_precision``): a ``GradScaler`` scales the loss
    for float16 and skips a step whose gradients overflowed; the default does
    nothing. ``group`` (``npgpt.training.distributed``): a ``DataParallel`` group
    gives this rank its rows of each global batch and sums the gradients
    over ranks; the default, one process, does nothing.
    """
    optimizer.set_lr(lr)
    params = group.parameters(optimizer)
    loss = 0.0      # on a GPU a 0-d array: the micro-batches' losses add up there, read once with the norm
    world = getattr(group, "world", None)
    rank, ranks = (world.rank, world.size) if world is not None else (0, 1)
    for micro, (rows, share) in enumerate(group.local_batches(batches)):     # this rank's rows of each batch
        # Dropout masks keyed by (step, micro-batch, rank): the same on resume, whatever was drawn before.
        key = nn.dropout_key(step, micro * ranks + rank) if step is not None else contextlib.nullcontext()
        with key:
            loss = loss + parallel.forward_backward(scaler.scaled(loss_fn, share), rows, params, workers=workers,
                                                    as_array=True)
    loss = group.sum_gradients(params, loss)
    flat = optimizer.flat_grads()           # a GPU: the gradients in one buffer per group (None on the CPU)
    # Unscaling and clipping then touch each buffer once: one kernel per group, not one per parameter.
    loss = scaler.unscale(params if flat is None else [SimpleNamespace(grad=b) for b in flat], loss)
    norm, loss = clip_grad_norm_with_loss(optimizer.param_groups, grad_clip or None, loss, reduce=group.sum_norm,
                                          grads=flat)
    if scaler.overflowed(loss, norm):                     # float16 overflow: no update, a smaller scale
        optimizer.zero_grad()
        return StepResult(loss, norm, skipped=True)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        optimizer.zero_grad()
        raise TrainingDiverged(f"training diverged at step {step}: loss {loss}, gradient norm {norm}; "
                               "the weights were not updated")
    optimizer.step()
    optimizer.zero_grad()
    group.share_weights()
    return StepResult(loss, norm)
