"""Mixed precision: float16 products, float32 everything else, and dynamic loss scaling.

Companion of ``docs/training.md`` (section "Mixed precision").

The recipe of Micikevicius et al. (2018), "Mixed Precision Training", as
PyTorch's ``GradScaler`` implements it:

* The weights stay float32: they are the optimizer's "master" copy, so small
  updates are not lost to float16's 11-bit mantissa (``w + 1e-4 * g`` rounds
  back to ``w`` in float16 whenever the update is below ``w / 2048``).
* The matrix products run in float16 (``GPT.set_compute_dtype``), where a
  GPU's tensor cores are several times faster than in float32; layer norm,
  softmax, GELU, the loss and the residual stream stay float32.
* Gradients in float16 underflow: anything below about 6e-8 becomes 0, and
  many gradients of a language model are that small. So the loss is
  multiplied by a scale ``S`` before the backward pass, which multiplies
  every gradient by ``S`` and lifts them into float16's range; the float32
  gradients are divided by ``S`` again before clipping and the update.
* ``S`` is found as training runs. It starts large (``2**16``); a step whose
  gradients contain inf or NaN (a product overflowed float16's 65,504) is
  skipped and ``S`` halved; after ``growth_interval`` good steps in a row it
  is doubled, to find the largest scale that does not overflow.

npgpt offers float16 only. bfloat16 (float32's exponent range, 8 bits of
mantissa, no loss scaling needed) exists for both array modules as
``ml_dtypes.bfloat16`` (CuPy 14 has minimal support for it), but npgpt does
not train in it yet: docs/gpu.md ("bfloat16") says what works and what is
missing.

Depends on ``npgpt.autograd`` (nothing else of npgpt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from npgpt.autograd import Tensor

__all__ = ["LossScaler", "NO_LOSS_SCALING", "GradScaler", "DTYPES"]

# The working types a run may ask for; the products of a "float16" run are float16.
DTYPES = ("float32", "float16")


class LossScaler:
    """The loss scaling of a float32 run: the scale is 1 and every method does nothing.

    ``GradScaler`` overrides it; the training step (``npgpt.engine``) calls
    the same three methods either way, so it has no ``if mixed precision``.
    """

    scale = 1.0

    def scaled(self, loss_fn: Callable[..., Tensor], weight: float = 1.0) -> Callable[..., Tensor]:
        """``loss_fn`` multiplied by ``scale * weight`` (``loss_fn`` itself when that is 1)."""
        factor = self.scale * weight
        return loss_fn if factor == 1.0 else (lambda *batch: loss_fn(*batch) * factor)

    def unscale(self, params: Iterable[Tensor], loss: float) -> float:
        """The gradients and ``loss`` divided by the scale (in place for the gradients); returns the loss."""
        return loss

    def overflowed(self, loss: float, norm: float) -> bool:
        """Whether this step overflowed and must be skipped; adjusts the scale."""
        return False


NO_LOSS_SCALING = LossScaler()


class GradScaler(LossScaler):
    """Dynamic loss scaling: ``scale`` multiplies the loss; ``update`` adjusts it after each step.

    ``init_scale`` 2**16, ``growth_factor`` 2, ``backoff_factor`` 0.5 and
    ``growth_interval`` 2000 are PyTorch's defaults.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        if not init_scale > 0 or not growth_factor > 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("GradScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 "
                             "and growth_interval >= 1")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0          # finite steps since the scale last changed
        self.skipped_steps = 0       # steps skipped because of inf/nan gradients, in all

    def unscale(self, params: Iterable[Tensor], loss: float) -> float:
        """Divide the gradients (in place) and ``loss`` by the scale: they are then the true float32 ones."""
        inverse = 1.0 / self.scale
        for p in params:
            if p.grad is not None:
                p.grad *= inverse
        return loss / self.scale

    def overflowed(self, loss: float, norm: float) -> bool:
        """A finite loss with a non-finite gradient norm: float16 overflowed, so skip the step and halve the scale.

        A non-finite *loss* is divergence, not overflow: the step raises, and the scale is left alone.
        """
        if not math.isfinite(loss):
            return False
        found_inf = not math.isfinite(norm)
        self.update(found_inf)
        return found_inf

    def update(self, found_inf: bool) -> None:
        """After a step: halve the scale if it overflowed, double it after ``growth_interval`` good steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (saved in a checkpoint's trainer_state.json)."""
        return {"scale": self.scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
