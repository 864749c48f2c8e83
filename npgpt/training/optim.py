"""Optimizers and the helpers around them: AdamW, SGD, gradient clipping, the LR schedule.

Companion of ``docs/training.md`` (sections "AdamW", "Warmup and cosine decay",
"Gradient clipping" and "Exact resume").

An optimizer holds a list of *parameter groups*. Each group is a dict with
the ``Parameter`` s it updates (``"params"``), their names (``"names"``,
used to label the optimizer's state in a checkpoint) and its own
hyper-parameters (``lr``, ``weight_decay`` ...). GPT-2 training uses two
groups: weight decay on the matrices of the linear layers, none on biases,
LayerNorm gains and the embeddings (:func:`param_groups`).

Every update is written in place into ``p.data`` with ``out=`` arguments: the
optimizer keeps pointing at the very arrays the model uses (where a group is
laid out flat, below, ``p.data`` becomes a view of the group's buffer when the
group is laid out: at the first step, and again after anything replaces a
weight or a state array or changes which parameters have gradients; hold the
Tensor, not its ``p.data``). All the array
work goes through ``xp = backend.array_module(p.data)``, so the same code
updates NumPy arrays on the CPU and CuPy arrays on a GPU without copying
anything between them.

On the CPU a step goes through the parameters in blocks of ``BLOCK``
elements, split between threads (docs/performance.md, "The optimizer
step"). An update is a dozen elementwise passes over the weight, its
gradient and its state; over a whole GPT-2 matrix each pass would stream
hundreds of MB from memory, but a block of 256 K elements (1 MB per array)
stays in the cache for all of them, and NumPy's single-threaded ufuncs
release the GIL, so two threads use both cores. The arithmetic is
elementwise, so the result is bit-for-bit the same however it is split.
Where the parameters are small (``speed.flat_optimizer``: a GPU always; on the
CPU a mean of at most 64 K numbers, nanoGPT's CPU recipe) each group's weights,
gradients and moments live in one flat buffer each (:class:`FlatGroup`), and a
pass is one call over the whole group instead of one per parameter: a dozen
calls per group, not a dozen per parameter, which is what a GPU wants (one
kernel launch per pass) and what a small model on a CPU wants too (the
recipe's AdamW step ~2.2 -> ~1.7 ms). The CPU still clips parameter by
parameter (:meth:`Optimizer.flat_grads`), so its norm adds the same squares
in the same order as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional, Union

from npgpt import backend
from npgpt.backend import Array, speed
from npgpt.backend.fuse import fuse

if TYPE_CHECKING:
    from npgpt.autograd import Tensor
    from npgpt.nn import Module

__all__ = ["Optimizer", "AdamW", "SGD", "param_groups", "configure_optimizer", "clip_grad_norm",
           "clip_grad_norm_with_loss", "cosine_schedule"]

# Elements of a parameter updated at a time on the CPU (the speed policy's ADAMW_BLOCK, 1 MB of float32).
BLOCK = speed.ADAMW_BLOCK

# What an optimizer takes as its parameters: trainable tensors, ``(name, tensor)`` pairs (as
# ``model.named_parameters()`` yields) or parameter groups (dicts with a ``"params"`` list).
Params = Iterable[Union["Tensor", tuple[str, "Tensor"], dict[str, Any]]]


# ============================================================ flat buffers
class FlatGroup:
    """One parameter group's weights, gradients and optimizer state as views into one flat buffer each.

    The path of :meth:`Optimizer.step` on a GPU (docs/gpu.md, "The launch and traffic budget"): each
    pass of an update is then one kernel over the whole group instead of one per parameter
    (GPT-2's AdamW: 26 launches instead of 1,972); and on the CPU for small parameters
    (``speed.flat_optimizer``), where it is one NumPy call per pass and block instead of one per
    parameter. ``p.data`` and the state arrays of every
    parameter become views into ``weights`` and ``state[key]``. Whoever replaces one (a
    checkpoint load, ``load_state_dict``, LoRA merging) breaks the link; :meth:`holds` notices
    (the views are known by identity), and the group is laid out again from the arrays then in place.
    """

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
        xp = backend.array_module(params[0].data)
        self.params, self.states, self.keys = list(params), list(states), keys
        self.weights = _packed(xp, [p.data for p in params])
        self.state = {k: _packed(xp, [s[k] for s in states]) for k in keys}
        self.grads = xp.empty_like(self.weights)
        self.views: list[tuple[Array, ...]] = []        # per parameter: its weight, gradient and state views
        start = 0
        for p, state in zip(params, states):
            part, shape = slice(start, start + p.data.size), p.data.shape
            start = part.stop
            p.data = self.weights[part].reshape(shape)
            for k in keys:
                state[k] = self.state[k][part].reshape(shape)
            self.views.append((p.data, self.grads[part].reshape(shape), *(state[k] for k in keys)))

    def holds(self, params: list[Tensor], states: list[dict[str, Any]]) -> bool:
        """Are these the parameters laid out here, their weights and state still this layout's views?"""
        if len(params) != len(self.params):
            return False
        for p, q, state, views in zip(params, self.params, states, self.views):
            if p is not q or p.data is not views[0] or any(state[k] is not v for k, v in zip(self.keys, views[2:])):
                return False
        return True

    def gather_grads(self) -> Array:
        """Copy every ``p.grad`` into ``grads`` (skipping those already there); ``p.grad`` becomes its view."""
        for p, views in zip(self.params, self.views):
            if p.grad is not views[1]:
                views[1][...] = p.grad
                p.grad = views[1]
        return self.grads


def _packed(xp: Any, arrays: list[Array]) -> Array:
    """The arrays one after the other in one new flat buffer (their common dtype)."""
    flat = xp.empty(sum(a.size for a in arrays), dtype=arrays[0].dtype)
    start = 0
    for a in arrays:
        flat[start:start + a.size] = a.reshape(-1)
        start += a.size
    return flat


# ====================================================================== base
def _named(params: Params) -> list[dict[str, Any]]:
    """Normalise what a user passes into a list of groups ``{"params", "names", ...}``.

    Accepted: an iterable of Parameters, of ``(name, Parameter)`` pairs (as
    ``model.named_parameters()`` yields), or of dicts that each have a
    ``"params"`` list (and optionally ``"names"`` and per-group settings).
    """
    params = list(params)
    if not params:
        raise ValueError("the optimizer got an empty list of parameters")
    if all(isinstance(g, dict) for g in params):
        groups = [dict(g) for g in params]
    elif all(isinstance(p, tuple) and len(p) == 2 for p in params):
        groups = [{"params": [p for _, p in params], "names": [n for n, _ in params]}]
    else:
        groups = [{"params": params}]
    counter = 0
    seen_names, seen_ids = set(), set()
    for i, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"parameter group {i} has no 'params' list")
        group["params"] = list(group["params"])
        names = group.get("names")
        if names is None:     # unnamed parameters are labelled by their position
            names = [f"param{counter + k}" for k in range(len(group["params"]))]
        names = list(names)
        if len(names) != len(group["params"]):
            raise ValueError(f"parameter group {i} has {len(group['params'])} params but {len(names)} names")
        for name, p in zip(names, group["params"]):
            if not getattr(p, "requires_grad", False):
                raise TypeError(f"optimizer: {name!r} is not a trainable tensor (requires_grad is False)")
            if name in seen_names or id(p) in seen_ids:
                raise ValueError(f"optimizer: parameter {name!r} appears twice")
            seen_names.add(name)
            seen_ids.add(id(p))
        group["names"] = names
        counter += len(names)
    return groups


class Optimizer:
    """Parameter groups, per-parameter state, ``zero_grad`` and (de)serialisation.

    Subclasses set ``defaults`` (the hyper-parameters and their values),
    ``state_keys`` (the names of the per-parameter arrays, e.g. Adam's
    moments) and implement ``_update(p, grad, state, group)``.
    """

    state_keys: tuple[str, ...] = ()

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups = []
        for group in _named(params):
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            self.param_groups.append(group)
        self.state = {}       # name -> {"step": int, key: array, ...}; created at the first update
        self.step_count = 0   # optimizer steps taken (calls to step())
        self._flat: dict[int, FlatGroup] = {}     # id(group) -> its flat layout (FlatGroup), where one is used

    def named_params(self) -> Iterator[tuple[str, Tensor, dict[str, Any]]]:
        for group in self.param_groups:
            for name, p in zip(group["names"], group["params"]):
                yield name, p, group

    def zero_grad(self) -> None:
        """Forget the gradients (``p.grad = None``): the next backward pass writes fresh ones."""
        for _, p, _ in self.named_params():
            p.grad = None

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every group (the trainer calls it each step with the schedule's value).

        A group with an ``"lr_scale"`` entry gets ``lr * lr_scale`` (fine-tuning gives a new
        classification head a larger rate than the pretrained body).
        """
        for group in self.param_groups:
            group["lr"] = float(lr) * float(group.get("lr_scale", 1.0))

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (those without are skipped)."""
        work = []          # (parameter, gradient, state, group) of every update of this step
        for name, p, group in self.named_params():
            if p.grad is None:
                continue
            state = self._state_of(name, p)
            state["step"] += 1
            work.append((p, p.grad, state, group))
        if work and self._flat_pays(work):
            work = self._step_flat(work)           # whole groups at once: one call per pass, not one per parameter
        if work and speed.threads_pay(work[0][0].data):
            self._step_in_blocks(work)
        else:
            for p, g, state, group in work:
                self._update(p.data, g, state, group, backend.array_module(p.data).empty_like(p.data))
        self.step_count += 1

    def _flat_pays(self, work: list[tuple[Tensor, Array, dict[str, Any], dict[str, Any]]]) -> bool:
        """Should this step update whole groups through their flat buffers (``speed.flat_optimizer``)?"""
        return speed.flat_optimizer(work[0][0].data, sum(p.data.size for p, _, _, _ in work), len(work))

    def _state_of(self, name: str, p: Tensor) -> dict[str, Any]:
        """The state of parameter ``name`` (zeros at step 0 the first time), its gradient's shape checked."""
        if p.grad.shape != p.data.shape:
            raise ValueError(f"optimizer: gradient of {name!r} has shape {tuple(p.grad.shape)}, "
                             f"the parameter {tuple(p.data.shape)}")
        state = self.state.get(name)
        if state is None:
            xp = backend.array_module(p.data)
            state = {"step": 0, **{k: xp.zeros_like(p.data) for k in self.state_keys}}
            self.state[name] = state
        return state

    def _step_flat(self, work: list[tuple[Tensor, Array, dict[str, Any], dict[str, Any]]]
                   ) -> list[tuple[Tensor, Array, dict[str, Any], dict[str, Any]]]:
        """Each group's update on its flat buffers: on a GPU one call, done here; on the CPU the buffers
        are returned, as items whose "parameter" only has ``.data`` (the weights' buffer), for
        ``_step_in_blocks``. Returns those and the items that could not go flat."""
        by_group: dict[int, list] = {}
        for item in work:
            by_group.setdefault(id(item[3]), []).append(item)
        rest = []
        for items in by_group.values():
            flat = self._flat_layout(items[0][3], [p for p, _, _, _ in items], [s for _, _, s, _ in items])
            if flat is None:
                rest.extend(items)
                continue
            flat.gather_grads()
            state = {"step": items[0][2]["step"], **flat.state}
            if speed.threads_pay(flat.weights):            # the CPU: the flat buffers in blocks, on both cores
                rest.append((SimpleNamespace(data=flat.weights), flat.grads, state, items[0][3]))
                continue
            scratch = backend.array_module(flat.weights).empty_like(flat.weights)   # from the pool, for this step
            self._update(flat.weights, flat.grads, state, items[0][3], scratch)
        return rest

    def _flat_layout(self, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Any]]
                     ) -> Optional[FlatGroup]:
        """The group's flat layout for these parameters (made, or made again, if need be); None where one
        update cannot serve them all: mixed dtypes, or parameters at different step counts."""
        if len({p.data.dtype for p in params}) != 1 or len({s["step"] for s in states}) != 1:
            return None
        flat = self._flat.get(id(group))
        if flat is None or not flat.holds(params, states):
            flat = self._flat[id(group)] = FlatGroup(params, states, self.state_keys)
        return flat

    def flat_grads(self) -> Optional[list[Array]]:
        """On a GPU, every gradient copied into its group's flat buffer, and the buffers; else None.

        ``p.grad`` becomes a view of the buffer, so clipping the buffers clips every gradient, and
        the norm is one dot product per group (``clip_grad_norm_with_loss(..., grads=...)``); the
        layout is made here if need be, so every step of a run (a resumed one too) takes its norm
        the same way. None on the CPU, or where a group cannot be laid out flat.
        """
        layouts = []
        for group in self.param_groups:
            named = [(name, p) for name, p in zip(group["names"], group["params"]) if p.grad is not None]
            if not named:
                continue
            if speed.threads_pay(named[0][1].data):
                # The CPU keeps clipping per parameter even where it updates flat: the norm then adds the
                # same squares in the same order as clip_grad_norm over model.parameters(), and a run of
                # npgpt train equals the loop written out (docs/training.md) bit for bit.
                return None
            flat = self._flat_layout(group, [p for _, p in named], [self._state_of(n, p) for n, p in named])
            if flat is None:
                return None
            layouts.append(flat)
        return [flat.gather_grads() for flat in layouts] or None

    def _step_in_blocks(self, work: list[tuple[Tensor, Array, dict[str, Any], dict[str, Any]]]) -> None:
        """The CPU step: every parameter cut into blocks of ``BLOCK`` elements, the blocks shared by threads.

        A block's weight, gradient and state slices stay in the cache through
        all the passes of ``_update``; each thread has one scratch block.
        """
        blocks = []        # (weight, gradient, state) slices: flat views, written in place
        for p, g, state, group in work:
            arrays = {k: v for k, v in state.items() if k != "step"}
            if not all(a.flags.c_contiguous for a in (p.data, *arrays.values())):
                # A flat view of a strided array would be a copy, and the update would be lost.
                self._update(p.data, g, state, group, backend.array_module(p.data).empty_like(p.data))
                continue
            w, g = p.data.reshape(-1), g.reshape(-1)
            arrays = {k: v.reshape(-1) for k, v in arrays.items()}
            for start in range(0, w.size, BLOCK):
                part = slice(start, start + BLOCK)
                blocks.append((w[part], g[part], {"step": state["step"], **{k: v[part] for k, v in arrays.items()}},
                               group))
        workers = min(speed.default_workers(), len(blocks))
        if not blocks:
            return

        def run(k: int) -> None:
            scratch = backend.array_module(blocks[0][0]).empty(BLOCK, dtype=blocks[0][0].dtype)
            for w, g, state, group in blocks[k::workers]:
                self._update(w, g, state, group, scratch[:w.size])

        if workers <= 1:
            run(0)
            return
        for future in [speed.thread_pool(workers).submit(run, k) for k in range(workers)]:
            future.result()

    def _update(self, w: Array, g: Array, state: dict[str, Any], group: dict[str, Any], scratch: Array) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: step counts, hyper-parameters, state arrays.

        ``{"step_count": int, "param_groups": [{hyper-parameters..., "names": [...]}],
        "state": {name: {"step": int, key: NumPy array}}}``. The arrays are host
        copies, so later updates do not change a state dict already taken.
        """
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        for g in groups:
            g["names"] = list(g["names"])
        state = {}
        for name, s in self.state.items():
            state[name] = {k: (v if k == "step" else backend.to_numpy(v).copy()) for k, v in s.items()}
        return {"type": type(self).__name__, "step_count": self.step_count, "param_groups": groups,
                "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the state arrays go to each parameter's device and dtype.

        The parameter names must be the same (a checkpoint of another model is
        refused, naming the first difference); shapes must match.
        """
        kind = state_dict.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"load_state_dict: this is a {type(self).__name__}, the state dict is a {kind}'s")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(saved_groups)} parameter groups saved, "
                             f"the optimizer has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if list(saved["names"]) != list(group["names"]):
                missing = sorted(set(group["names"]) - set(saved["names"]))
                extra = sorted(set(saved["names"]) - set(group["names"]))
                raise ValueError(f"load_state_dict: group {i} names differ (missing {missing}, "
                                 f"unexpected {extra}, or a different order)")
        params = {name: p for name, p, _ in self.named_params()}
        new_state = {}
        for name, saved in state_dict["state"].items():
            if name not in params:
                raise ValueError(f"load_state_dict: state for unknown parameter {name!r}")
            p = params[name]
            entry = {"step": int(saved["step"])}
            for key in self.state_keys:
                if key not in saved:
                    raise ValueError(f"load_state_dict: {name!r} lacks its {key!r} array")
                array = saved[key]
                if tuple(array.shape) != tuple(p.data.shape):
                    raise ValueError(f"load_state_dict: {name}.{key} has shape {tuple(array.shape)}, "
                                     f"the parameter {tuple(p.data.shape)}")
                entry[key] = backend.to_device(array, p.device).astype(p.data.dtype, copy=True)
            new_state[name] = entry
        for saved, group in zip(saved_groups, self.param_groups):
            for key in self.defaults:
                if key in saved:
                    group[key] = saved[key]
        self.state = new_state
        self.step_count = int(state_dict["step_count"])


# ===================================================================== AdamW
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), docs/training.md eq:adam-first-moment to
    eq:adam-update.

    For each parameter ``theta`` with gradient ``g`` at step ``t = 1, 2, ...``::

        m_t     = beta1 m_{t-1} + (1 - beta1) g                        (eq:adam-first-moment)
        v_t     = beta2 v_{t-1} + (1 - beta2) g^2                      (eq:adam-second-moment)
        m_hat   = m_t / (1 - beta1^t),  v_hat = v_t / (1 - beta2^t)    (eq:adam-bias-correction)
        theta  <- theta - lr wd theta                                  (eq:decoupled-weight-decay)
        theta  <- theta - lr m_hat / (sqrt(v_hat) + eps)               (eq:adam-update)

    The decay (eq:decoupled-weight-decay) shrinks the weights directly instead of being added to
    the gradient, so it is not rescaled by Adam's per-coordinate step size.
    The same order of operations as ``torch.optim.AdamW``.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Params, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1) -> None:
        if lr < 0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"AdamW: eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])),
                                      eps=float(eps), weight_decay=float(weight_decay)))

    def _update(self, w: Array, g: Array, state: dict[str, Any], group: dict[str, Any], buf: Array) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        t = state["step"]
        # eq:adam-bias-correction and eq:adam-update folded together: sqrt(v_hat) = sqrt(v) / sqrt(1 - beta2^t), and the
        # 1 / (1 - beta1^t) of m_hat goes into the step size, so m_hat is never materialised.
        bias1, bias2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        # The factors are Python numbers computed here, not in the kernel: a Python number takes the
        # arrays' type, a number computed by a fused kernel would be a float64 array scalar.
        decay = 1.0 - lr * wd if wd != 0.0 else None
        # On a GPU the scratch is a register of the one fused kernel, not memory it would write.
        scratch = None if backend.is_cupy_array(w) else buf
        _adamw_kernel(w, g, state["exp_avg"], state["exp_avg_sq"], scratch, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
                      decay, 1.0 / math.sqrt(bias2), eps, -lr / bias1)


@fuse
def _adamw_kernel(xp: Any, w: Array, g: Array, m: Array, v: Array, buf: Any, beta1: float, one_minus_beta1: float,
                  beta2: float, one_minus_beta2: float, decay: Any, inv_sqrt_bias2: float, eps: float,
                  step: float) -> None:
    """One AdamW update of ``w``, ``m``, ``v`` in place (``AdamW``'s equations): one kernel on a GPU
    (``npgpt.backend.fuse``; it was 13 or 14), the same passes through ``buf`` on the CPU."""
    # eq:adam-first-moment: m <- beta1 m + (1 - beta1) g
    m *= beta1
    buf = xp.multiply(g, one_minus_beta1, out=buf)
    m += buf
    # eq:adam-second-moment: v <- beta2 v + (1 - beta2) g^2
    v *= beta2
    buf = xp.multiply(g, g, out=buf)
    buf *= one_minus_beta2
    v += buf
    # eq:decoupled-weight-decay: decoupled weight decay, on the weights before the Adam step (as PyTorch does)
    if decay is not None:
        w *= decay
    buf = xp.sqrt(v, out=buf)
    buf *= inv_sqrt_bias2
    buf += eps
    buf = xp.divide(m, buf, out=buf)
    buf *= step
    w += buf


# ======================================================================= SGD
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay (docs/training.md eq:sgd-momentum).

    ``g' = g + wd theta``; ``b_t = mu b_{t-1} + g'`` (``b_1 = g'``);
    ``theta <- theta - lr b_t`` (plain SGD when ``mu = 0``). PyTorch's convention.
    """

    def __init__(self, params: Params, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay)))
        self.state_keys = ("momentum_buffer",) if momentum else ()

    def _update(self, w: Array, g: Array, state: dict[str, Any], group: dict[str, Any], buf: Array) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        buf[...] = g
        if wd != 0.0:
            buf += wd * w
        if mu != 0.0:
            b = state["momentum_buffer"]
            if state["step"] == 1:
                b[...] = buf            # the first step starts the buffer at g' (no decay of zeros)
            else:
                b *= mu
                b += buf
            buf[...] = b
        buf *= -lr
        w += buf


# ============================================================ parameter groups
def param_groups(model: Module, weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """Two AdamW groups for GPT-2: decay on linear layers' matrices, none elsewhere.

    Weight decay pulls weights towards zero. That is a sensible prior for the
    matrices that mix features, but not for biases and LayerNorm gains (a
    gain of 0 would switch a feature off), nor for the embedding tables, whose
    rows for rare tokens receive few gradient updates and would simply decay
    away. So the rule is: decay a parameter iff it has 2 or more axes and is
    not an embedding table (``wte``, ``wpe``, or trained rows of one: LoRA's trainable tokens).
    """
    from npgpt import nn  # the layer types tell embeddings apart from linear weights

    embeddings = {id(p) for _, m in model.named_modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        target = decay if p.ndim >= 2 and id(p) not in embeddings else no_decay
        target[0].append(name)
        target[1].append(p)
    groups = []
    if decay[0]:
        groups.append({"params": decay[1], "names": decay[0], "weight_decay": float(weight_decay)})
    if no_decay[0]:
        groups.append({"params": no_decay[1], "names": no_decay[0], "weight_decay": 0.0})
    return groups


def configure_optimizer(model: Module, lr: float = 3e-4, weight_decay: float = 0.1,
                        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> AdamW:
    """``AdamW`` over :func:`param_groups` of ``model``, with GPT-3's published settings (betas 0.9, 0.95; eps 1e-8)."""
    return AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ================================================================= clipping
def clip_grad_norm(params: Params | dict[str, Tensor], max_norm: Optional[float],
                   reduce: Optional[Callable[[float], float]] = None) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    ``||g|| = sqrt(sum_p sum_i g_{p,i}^2)`` over every parameter's gradient;
    when ``||g|| > max_norm`` each gradient is multiplied by
    ``max_norm / (||g|| + 1e-6)`` (docs/training.md eq:grad-clip). The direction of
    the update is unchanged, only its length is capped. Returns ``||g||``
    before clipping, as a float (``inf``/``nan`` if a gradient is not finite:
    the caller decides what to do; nothing is scaled then).

    ``reduce`` sums the squared norm over processes that each hold part of
    the gradients (``npgpt.training.distributed``, optimizer sharding); it is given
    the local sum of squares and returns the global one.
    """
    return clip_grad_norm_with_loss(params, max_norm, None, reduce)[0]


def clip_grad_norm_with_loss(params: Params | dict[str, Tensor], max_norm: Optional[float], loss: Any,
                             reduce: Optional[Callable[[float], float]] = None,
                             grads: Optional[list[Array]] = None) -> tuple[float, Optional[float]]:
    """``clip_grad_norm``, and a training step's ``loss`` brought to the host with it: ``(norm, loss)``.

    ``loss`` (a 0-d array on the gradients' device, or a number, or None)
    travels in the same copy as the sum of squares: a step on a GPU reads
    one pair of numbers from the device, which the trainer needs on the
    host anyway, to refuse a non-finite step before the weights are
    touched and to log the loss. ``grads``: the gradients as the optimizer's
    flat buffers (``Optimizer.flat_grads``), every ``p.grad`` a view of one:
    the norm is then one dot product per buffer, and clipping one product.
    """
    if grads is not None:
        return _clip(grads, max_norm, loss, reduce)
    if isinstance(params, dict):
        params = params.values()
    grads = []
    for p in params:
        if isinstance(p, dict):            # parameter groups
            grads.extend(q.grad for q in p["params"] if q.grad is not None)
        elif isinstance(p, tuple):         # (name, param)
            if p[1].grad is not None:
                grads.append(p[1].grad)
        elif p.grad is not None:
            grads.append(p.grad)
    return _clip(grads, max_norm, loss, reduce)


def _clip(grads: list[Array], max_norm: Optional[float], loss: Any,
          reduce: Optional[Callable[[float], float]]) -> tuple[float, Optional[float]]:
    """``clip_grad_norm_with_loss`` on a list of gradient arrays."""
    if not grads and reduce is None:
        return 0.0, backend.read_scalars(loss)[0]
    if grads:
        xp = backend.array_module(grads[0])
        # A dot product per array (BLAS, no temporary g*g); the sum stays on the device.
        square_sum = sum(xp.dot(g.reshape(-1), g.reshape(-1)).astype(xp.float64) for g in grads)
        total_sq, loss = backend.read_scalars(square_sum, loss)
    else:
        loss = backend.read_scalars(loss)[0]
        total_sq = 0.0                    # one device -> host transfer per step (above)
    if reduce is not None:
        total_sq = reduce(total_sq)
    total = math.sqrt(total_sq) if math.isfinite(total_sq) else total_sq
    if max_norm is not None and math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total, loss


# ================================================================= schedule
def cosine_schedule(step: int, max_steps: int, lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` (0-based), docs/training.md eq:lr-schedule.

    Linear warmup over the first ``warmup_steps`` steps, from ``lr / warmup``
    to ``lr``; then a half cosine from ``lr`` down to ``min_lr`` at
    ``step = max_steps``::

        lr_t = lr (t + 1) / W                                    for t < W
        lr_t = min_lr + (lr - min_lr) (1 + cos(pi (t - W) / (S - W))) / 2   for W <= t < S
        lr_t = min_lr                                            for t >= S
    """
    if max_steps <= 0:
        raise ValueError(f"cosine_schedule: max_steps must be positive, got {max_steps}")
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"cosine_schedule: warmup_steps must lie in 0..max_steps ({max_steps}), got {warmup_steps}")
    if min_lr > lr:
        raise ValueError(f"cosine_schedule: min_lr ({min_lr}) is larger than lr ({lr})")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
