"""The differentiable building blocks of a GPT, each a fused op with its own backward.

Companion of ``docs/autograd.md`` (section "Fused operations") and
``docs/model.md``. Import it as ``import npgpt.functional as F``.

Why fused ops? Built from elementary operations, ``softmax`` alone would be
five graph nodes each saving an array for its backward pass. Written as one
op, its forward computes the result directly and its backward uses the
closed-form gradient: fewer temporaries, fewer passes over memory, and a
formula a reader can check against the docstring. Every op below states

* its formula (the forward), and
* its gradient (what the backward computes given ``g = dL/dy``),

and is checked against central finite differences in float64 by the tests.

All ops take and return ``Tensor``; arrays are created with the module of
the input data (``xp = array_module(x.data)``) so that the same code runs on
NumPy and CuPy.
"""

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from npgpt import backend
from npgpt.autograd.core import Tensor, _describe, _make, as_tensor, is_grad_enabled
from npgpt.autograd.graph import RowGradient
from npgpt.backend import speed
from npgpt.backend.fuse import fuse
from npgpt.io.inputs import as_array

Array = Any  # a numpy.ndarray or a cupy.ndarray


def _xp(t):
    return backend.array_module(t.data)


def _check_float(name, t):
    if t.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point tensor, got {_describe(t)}")


# ---------------------------------------------------------------- linear
def linear(x: Any, weight: Any, bias: Tensor | None = None, compute_dtype: Any = None) -> Tensor:
    """Affine map ``y = x W + b`` (docs/model.md eq:affine).

    Shapes: ``x`` (..., in), ``weight`` (in, out), ``bias`` (out,) -> (..., out).
    The weight is stored (in, out) -- GPT-2's own layout ("Conv1D") -- so no
    transpose is needed to load GPT-2 checkpoints, and decoding one token
    streams the matrix row by row, the fast direction in memory.

    Gradients (with ``X`` the inputs flattened to (N, in)):
    ``dL/dx = g W^T``, ``dL/dW = X^T g``, ``dL/db = sum_rows g``.

    ``compute_dtype`` (e.g. ``float16``, mixed precision, docs/training.md):
    the two products run on copies of ``X``, ``W`` and ``g`` in that type,
    where a GPU's tensor cores are fast; the output and the gradients come
    back in the inputs' own types, so everything else (layer norm, softmax,
    the loss, the residual stream, the float32 weights) stays float32.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: input {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
                         "(expected x (..., in) and weight (in, out))")
    if bias is not None and tuple(bias.shape) != (weight.shape[1],):
        raise ValueError(f"linear: bias of shape {tuple(bias.shape)} does not fit weight {tuple(weight.shape)}")
    cd = np.dtype(compute_dtype) if compute_dtype is not None else None
    if cd == x.dtype:
        cd = None                          # nothing to cast: the products run in the inputs' own types
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, x.shape[-1])   # one large GEMM instead of a batch of small ones
    w = weight.data
    if cd is not None:
        x2, w = x2.astype(cd), w.astype(cd)
    out = x2 @ w
    if bias is not None:
        out += bias.data if cd is None else bias.data.astype(cd)
    if cd is not None:
        out = out.astype(x.dtype)
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        gc = g2 if cd is None else g2.astype(cd)   # a scaled gradient too large for cd becomes inf: the scaler sees it
        gx = gw = None
        if x.requires_grad:
            gx = gc @ w.T
            gx = (gx if cd is None else gx.astype(x.dtype)).reshape(x.shape)
        if weight.requires_grad:
            gw = x2.T @ gc
            gw = gw if cd is None else gw.astype(weight.dtype)
        if bias is None:
            return gx, gw
        return gx, gw, speed.column_sums(g2) if bias.requires_grad else None

    return _make(out.reshape(lead + (weight.shape[1],)), parents, backward, fresh=True)


# ------------------------------------------------------- softmax family
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``y_i = exp(x_i - m) / sum_j exp(x_j - m)``, ``m = max_j x_j`` (docs/model.md eq:softmax).

    Subtracting the maximum changes nothing mathematically (eq:softmax is
    invariant to adding a constant to every ``x_i``) but keeps ``exp`` from
    overflowing. Gradient: ``dL/dx = y * (g - sum(g * y, axis))``.

    Why this form and not the equal ``exp(x_i - lse)``, ``lse = m + log s``
    (``s`` the sum of exponentials): ``lse`` is as large as the logits, and
    float32 stores a number near 1e4 only to the nearest 2**-10 ~ 1e-3, so
    rounding it drops the low digits of ``log s``; that error of up to 5e-4
    in the exponent is a relative error of up to 5e-4 in every probability.
    ``x_i - m`` is exact for the entries near the maximum (and otherwise off
    by at most a relative 2**-24 ~ 6e-8 of itself), so ``exp(x_i - m) / s``
    is good to a few float32 ulps for the entries that carry the probability.
    """
    _check_float("softmax", x)
    y = softmax_array(x.data, axis)
    return _make(y, (x,), lambda g: (y * (g - (g * y).sum(axis=axis, keepdims=True)),))


def softmax_array(x: Array, axis: int = -1, *, overwrite: bool = False) -> Array:
    """The forward of ``softmax`` on a plain array: ``exp(x - m) / sum exp(x - m)``, ``m = max x``.

    No graph, no gradient: for sampling, where the logits are arrays.
    ``overwrite=True`` computes the result in ``x``'s own memory (the
    attention op does this with its scores). The formula, and why it is
    written this way in float32, is that of ``softmax``.
    """
    if x.dtype.kind != "f":
        raise TypeError(f"softmax_array: expected a floating-point array, got dtype {x.dtype}")
    m = x.max(axis=axis, keepdims=True)
    if overwrite:
        _exp_shifted_in_place(x, m)
        y = x
    else:
        y = _exp_shifted(x, m)
    y /= speed.row_sums(y) if axis in (-1, y.ndim - 1) else y.sum(axis=axis, keepdims=True)
    return y


@fuse
def _exp_shifted(xp, x, m):
    """``exp(x - m)``, one kernel on a GPU (``npgpt.backend.fuse``)."""
    y = x - m
    return xp.exp(y, out=y)


@fuse
def _exp_shifted_in_place(xp, x, m):
    """``x <- exp(x - m)`` in ``x``'s own memory, one kernel on a GPU."""
    x -= m
    xp.exp(x, out=x)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``y_i = (x_i - m) - log sum_j exp(x_j - m)``, ``m = max_j x_j`` (docs/model.md eq:log-softmax).

    Gradient: ``dL/dx = g - softmax(x) * sum(g, axis)``, with the softmax
    recomputed in the backward pass as ``exp(x - m) / s`` from the saved row
    maxima ``m`` and sums ``s``, not as ``exp(y)``: for the reason given in
    ``softmax``, no large ``m + log s`` is ever rounded (the forward adds
    ``log s`` to the small ``x - m``, never to ``m``). Besides its output,
    only ``m`` and ``s`` (one number per row) are kept.
    """
    _check_float("log_softmax", x)
    xp = _xp(x)
    m = x.data.max(axis=axis, keepdims=True)
    y = x.data - m
    s = xp.exp(y).sum(axis=axis, keepdims=True)
    y -= xp.log(s)

    def backward(g):
        p = x.data - m
        xp.exp(p, out=p)
        p *= -(g.sum(axis=axis, keepdims=True) / s)    # -softmax(x) * sum(g)
        p += g
        return (p,)

    return _make(y, (x,), backward, fresh=True)


# -------------------------------------------------------- activations
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation (docs/model.md eq:gelu):

    ``y = x/2 (1 + tanh(u))`` with ``u = c (x + 0.044715 x^3)``, ``c = sqrt(2/pi)``.

    Gradient: ``dL/dx = g [ (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 * 0.044715 x^2) ]``,
    ``t = tanh(u)``.

    Computed through the gate ``s = (1 + t)/2 = 1 / (1 + exp(-2u))``, the same number written
    with one ``exp`` and no cancellation: ``y = x s``, and since ``1 - t^2 = 4 s (1 - s)`` the
    gradient is ``g [ s + 2 c x (1 + 3 * 0.044715 x^2) s (1 - s) ]``. Far left ``exp(-2u)``
    overflows to ``inf`` and ``s`` is exactly 0, as it should be. The cube is written ``x*x*x``:
    float32 ``x**3`` goes through ``pow`` and is several times slower.

    The backward pass needs ``s``. Where the speed policy says the activation is small
    (``npgpt.backend.speed.keep_gelu_gate``: nanoGPT's CPU recipe, train-small; always on a GPU)
    the forward's ``s`` is kept, and the backward pass costs 9 passes over memory instead of 16;
    for large activations on the CPU (train-124m's 4 x 256 tokens: 12.6 MB a layer, 151 MB in
    all) only ``x`` is kept and ``s`` is computed again, bit for bit the forward's.
    """
    _check_float("gelu", x)
    xp = _xp(x)
    a = x.data
    y, s = _gelu_forward(a)
    kept = s if speed.keep_gelu_gate(s) else None

    def backward(g):
        return (_gelu_backward(a, kept if kept is not None else _gelu_gate(xp, a), g),)

    return _make(y, (x,), backward, fresh=True)


@fuse
def _gelu_forward(xp, a):
    """``(y, s)``: GELU's output ``a s`` and its gate ``s``, one kernel on a GPU (``npgpt.backend.fuse``)."""
    s = _gelu_gate(xp, a)
    return a * s, s


@fuse
def _gelu_backward(xp, a, gate, g):
    """``g [ s + 2 c a (1 + 3 * 0.044715 a^2) s (1 - s) ]``, ``s`` the gate: one kernel on a GPU."""
    d = a * a
    d *= 6 * _GELU_C * 0.044715
    d += 2 * _GELU_C
    d *= a                        # 2 c x (1 + 3 * 0.044715 x^2) = 2 du/dx x
    one_minus = 1.0 - gate        # a Python number takes the gate's type (NumPy 2, and CuPy's kernels)
    one_minus *= gate             # s (1 - s)
    d *= one_minus
    d += gate
    d *= g
    return d


def _gelu_gate(xp, a):
    """``s = 1 / (1 + exp(-2u))`` with ``u = c (a + 0.044715 a^3)``: GELU's ``(1 + tanh u)/2``, 7 passes."""
    s = a * a
    s *= -2 * _GELU_C * 0.044715
    s -= 2 * _GELU_C
    s *= a                            # -2u
    with backend.overflow_expected():  # exp(-2u) = inf far left, where the gate is exactly 0
        xp.exp(s, out=s)
    s += 1.0
    return xp.reciprocal(s, out=s)


def _stable_sigmoid(xp, z):
    """``1 / (1 + e^-z)`` as ``where(z >= 0, 1, e^z) / (1 + e^-|z|)``: no branch overflows."""
    e = xp.exp(-xp.abs(z))
    return (xp.where(z >= 0, 1.0, e) / (1.0 + e)).astype(z.dtype, copy=False)


def sigmoid(x: Tensor) -> Tensor:
    """``y = 1 / (1 + exp(-x))`` (docs/finetuning.md eq:sigmoid); gradient ``g y (1 - y)``.

    Computed as ``exp(min(x,0)) / (1 + exp(-|x|))`` so that neither branch
    overflows for large ``|x|``.
    """
    _check_float("sigmoid", x)
    y = _stable_sigmoid(_xp(x), x.data)
    return _make(y, (x,), lambda g: (g * y * (1.0 - y),))


def dropout(x: Tensor, p: float, training: bool = True, rng: Any = None) -> Tensor:
    """Inverted dropout: ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``.

    Identity when not training or ``p == 0``. Scaling by ``1/(1-p)`` at train
    time keeps ``E[y] = x``, so nothing changes at inference. Gradient:
    ``g * m / (1 - p)``. ``rng`` is a ``Generator`` of the data's module
    (``numpy.random.default_rng(seed)``), for reproducible masks.
    """
    check_dropout(p)
    if not training or p == 0.0:
        return x
    mask = _dropout_mask(_xp(x), rng, x.shape, x.dtype, p)
    return _make(x.data * mask, (x,), lambda g: (g * mask,))


def check_dropout(p: float, what: str = "dropout probability") -> None:
    """The one check of a dropout probability: ``0 <= p < 1`` (``p = 1`` would drop every unit and
    divide the survivors by 0); else a ValueError naming ``what``. The model's config, the training
    settings and the LoRA adapters all check theirs with it."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p!r}")


def _dropout_mask(xp, rng, shape, dtype, p):
    """``m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``: float32 uniforms ``u`` from ``rng``, kept where ``u >= p``."""
    rng = rng if rng is not None else xp.random.default_rng()
    mask = (rng.random(shape, dtype=np.float32) >= p).astype(dtype)
    mask *= 1.0 / (1.0 - p)
    return mask


# ---------------------------------------------------------- normalisation
def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis (docs/model.md eq:layer-norm):

    ``xhat = (x - mu) / sqrt(var + eps)``, ``y = xhat * w + b``, with ``mu`` and
    ``var`` (biased) the mean and variance of the last axis.

    Gradient, with ``h = g * w`` and ``r = 1/sqrt(var + eps)``:
    ``dL/dx = r (h - mean(h) - xhat mean(h xhat))``,
    ``dL/dw = sum g xhat``, ``dL/db = sum g`` (sums over all leading axes).
    """
    _check_float("layer_norm", x)
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"layer_norm: {name} of shape {tuple(p.shape)} does not fit input {tuple(x.shape)}")
    w, b = (None if p is None else p.data for p in (weight, bias))
    xhat, rstd, y = _normalised(x.data, w, b, eps)
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(g):
        h = g * w if weight is not None else g
        gx = _layer_norm_dx(h, _row_mean(h), xhat, _row_mean(h, xhat), rstd)
        grads = [gx]
        if weight is not None:
            grads.append(speed.column_dots(g, xhat) if weight.requires_grad else None)
        if bias is not None:
            grads.append(speed.column_sums(g) if bias.requires_grad else None)
        return tuple(grads)

    return _make(y, parents, backward, fresh=True)


def _normalised(a: Array, w: Array | None, b: Array | None, eps: float) -> tuple[Array, Array, Array]:
    """Layer norm's forward arrays ``(xhat, r, y)``, ``r = 1 / sqrt(var + eps)`` kept (N..., 1).

    On the CPU: the mean, the centred ``xhat = a - mu``, its mean square, ``r``, then ``xhat r``
    and ``y`` (the sums as products with ones, ``_row_mean``). On a GPU the centring is never a
    pass of its own: three kernels, the mean, one fused reduction that centres and gives ``r``
    directly, and one fused kernel that writes ``xhat`` and ``y`` (npgpt.backend.fuse).
    """
    if speed.one_kernel_mean(a):
        mu = a.mean(axis=-1, keepdims=True)
        rstd = _inverse_std_of_rows(eps)(a, mu, 1.0 / a.shape[-1])[..., None]
        xhat, y = _centre_and_normalise(a, mu, rstd, w, b)
        return xhat, rstd, y
    mu = _row_mean(a)
    xhat = a - mu
    rstd = _inverse_std(_row_mean(xhat, xhat), eps)
    y = _normalise(xhat, rstd, w, b)        # xhat *= rstd, in place
    return xhat, rstd, y


_INVERSE_STD_OF_ROWS: dict[float, Any] = {}


def _inverse_std_of_rows(eps: float) -> Any:
    """The fused reduction ``1 / sqrt(sum((a - mu)^2 / C) + eps)`` along the last axis, made once per ``eps``.

    After its reduction a fused kernel may use only constants of its own, not its arguments
    (CuPy's tracer: "Shape mismatch"), so ``eps`` is written into the function, not passed."""
    kernel = _INVERSE_STD_OF_ROWS.get(eps)
    if kernel is None:
        def inverse_std_of_rows(xp, a, mu, inverse_count):
            d = a - mu
            return 1.0 / xp.sqrt(xp.sum(d * d * inverse_count, axis=-1) + eps)

        kernel = _INVERSE_STD_OF_ROWS[eps] = fuse(inverse_std_of_rows)
    return kernel


@fuse
def _centre_and_normalise(xp, a, mu, rstd, w, b):
    """``xhat = (a - mu) r`` and ``y = xhat w + b`` (``_normalise``), both written by one kernel on a GPU."""
    xhat = a - mu
    return xhat, _normalise.kernel(xp, xhat, rstd, w, b)


@fuse
def _inverse_std(xp, var, eps):
    """``1 / sqrt(var + eps)``, one kernel on a GPU (``npgpt.backend.fuse``)."""
    return 1.0 / xp.sqrt(var + eps)


@fuse
def _normalise(xp, xhat, rstd, w, b):
    """``xhat <- xhat r`` (in place) and ``y = xhat w + b`` (``w``, ``b`` may be None): one kernel on a GPU."""
    xhat *= rstd
    y = xhat * w if w is not None else xhat.copy()
    if b is not None:
        y += b
    return y


@fuse
def _layer_norm_dx(xp, h, mean_h, xhat, mean_h_xhat, rstd):
    """``r (h - mean(h) - xhat mean(h xhat))``, layer norm's input gradient: one kernel on a GPU."""
    gx = h - mean_h
    gx -= xhat * mean_h_xhat
    gx *= rstd
    return gx


def _row_mean(a: Array, b: Array | None = None) -> Array:
    """The mean of the last axis of ``a`` (of ``a * b`` if ``b`` is given), kept: ``sum / C``.

    On the CPU the sums are products with ones (``npgpt.backend.speed.row_sums``, ``row_dots``)
    and the division is in place, without ``mean``'s Python wrapper (~10 us a call, which a
    decoding step, 25 layer norms over one row, notices); on a GPU it is one reduction kernel
    instead of two or three launches (``speed.one_kernel_mean``): ``mean``, or for ``a * b`` a
    fused kernel whose pre-map is the product (``_mean_of_product``).
    """
    if speed.one_kernel_mean(a):
        if b is None:
            return a.mean(axis=-1, keepdims=True)
        return _mean_of_product(a, b, 1.0 / a.shape[-1])[..., None]
    m = speed.row_sums(a) if b is None else speed.row_dots(a, b)
    m /= a.shape[-1]
    return m


@fuse
def _mean_of_product(xp, a, b, inverse_count):
    """``sum(a b / C)`` along the last axis (``inverse_count = 1 / C``): one reduction kernel on a GPU.

    The scaling is in the pre-map, before the sum: a fused kernel's arguments may not be used after
    its reduction (CuPy's tracer: "Shape mismatch"), and ``C`` differs between models."""
    return xp.sum(a * b * inverse_count, axis=-1)


# -------------------------------------------------------------- embedding
def embedding(ids: Array, weight: Tensor) -> Tensor:
    """Row lookup ``y[..., :] = W[ids[...], :]`` (docs/model.md eq:embedding).

    Shapes: ``ids`` int (...), ``weight`` (V, C) -> (..., C). Gradient: each
    row of ``g`` is added to row ``ids`` of ``dL/dW`` -- a scatter-add, since
    a token that occurs twice collects both contributions.

    ``ids`` must be an integer array on the weight's device; their values are
    trusted, not read: checking them (``npgpt.inputs.check_token_ids``) costs
    a device-to-host copy on a GPU, so the model's entry points do it once,
    before the trunk (``inputs.gpt_inputs``).
    """
    ids = as_array(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    out = weight.data[ids]

    def backward(g):
        # Rows only: the walk adds them into the weight's other gradient, if any (autograd.RowGradient).
        return (RowGradient(ids.reshape(-1), g.reshape(-1, weight.shape[1]), weight.shape),)

    return _make(out, (weight,), backward, fresh=True)


# ----------------------------------------------------------------- losses
def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of the targets (docs/training.md eq:cross-entropy-loss):

    ``L = -1/N sum_{i: y_i != ignore} log softmax(z_i)[y_i]``
    ``  = 1/N sum_i ((m_i - z_i[y_i]) + log s_i)``, with ``m_i = max_j z_ij``
    and ``s_i = sum_j exp(z_ij - m_i)``.

    Shapes: ``logits`` (..., V), ``targets`` int (...). Gradient:
    ``dL/dz_i = (softmax(z_i) - onehot(y_i)) / N`` for counted rows, 0 for
    ignored ones, with ``softmax(z_i) = exp(z_i - m_i) / s_i``.

    Stable in float32: ``logsumexp(z_i) = m_i + log s_i`` is never formed.
    At logits of 1e4 float32 could hold it only to the nearest 2**-10, and
    the rounding (up to 5e-4) would become an error of up to 5e-4 in the
    loss and a relative error of up to 5e-4 in every probability of the
    gradient (see ``softmax``); ``m_i - z_i[y_i]`` and ``z_i - m_i`` are
    exact near the maximum.

    Fused: the forward keeps only ``m`` and ``s`` (one number each per row),
    and the backward writes ``softmax - onehot`` straight into the gradient
    array, so no more than one (N, V) array is alive at a time besides the
    logits.
    """
    _check_float("cross_entropy", logits)
    V = logits.shape[-1]
    xp = _xp(logits)
    z = logits.data.reshape(-1, V)
    counted, y_safe, n = _checked_targets("cross_entropy", targets, "logits", logits.shape, V, ignore_index, xp)
    rows = xp.arange(z.shape[0])
    m = z.max(axis=1)
    e = z - m[:, None]
    xp.exp(e, out=e)
    s = e.sum(axis=1)                            # >= 1: the maximum contributes exp(0)
    del e
    per_row = m - z[rows, y_safe]
    per_row += xp.log(s)
    per_row *= counted
    loss = per_row.sum() / n

    def backward(g):
        w = (counted * (g / n)).astype(z.dtype)  # dL/dloss_i, 0 for ignored rows
        grad = xp.subtract(z, m[:, None])
        xp.exp(grad, out=grad)
        grad *= (w / s)[:, None]                 # w * softmax, row by row
        grad[rows, y_safe] -= w                  # minus w * the one-hot target
        return (grad.reshape(logits.shape),)

    return _make(xp.asarray(loss, dtype=logits.dtype), (logits,), backward, fresh=True)




def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Any, ignore_index: int = -100,
                         block_rows: int | None = None) -> Tensor:
    """The LM head and the loss in one op: ``cross_entropy(h W^T, y)`` (docs/training.md eq:cross-entropy-loss).

    Shapes: ``hidden`` (..., C), ``weight`` (V, C) -- the tied ``wte`` --,
    ``targets`` int (...). The value is that of ``cross_entropy(linear(h, W^T), y)``:

    ``L = 1/N sum_{i counted} (m_i - z_iy + log s_i)``, ``z_i = h_i W^T``,

    with ``m_i``, ``s_i`` as in ``cross_entropy``. Gradient (``g = dL/dL``, a
    scalar): with ``D_i = (softmax(z_i) - onehot(y_i)) / N`` (0 for ignored
    rows), ``dL/dh = g D W`` and ``dL/dW = g D^T H``.

    Why fused: the logits of a batch are its largest array ((N, V): 206 MB
    for GPT-2 at 1,024 tokens), and the unfused pair keeps them, a copy for
    the softmax, and their gradient. Here the rows go through in blocks of
    ``block_rows`` (default: ~64 MB of logits): each block's logits are made,
    turned into ``D`` in place right away (the loss is the last op of the
    graph, so its gradient is known up to the factor ``g``), and multiplied
    into ``dL/dh`` and ``dL/dW``; only those two survive, and the backward
    pass just scales them by ``g``. Nothing (N, V) ever exists, and ``exp``
    runs once per logit instead of twice. Rows whose target is ``ignore_index``
    are left out before the head (``_counted_rows``): their loss and gradient
    are zero. Under ``no_grad`` (or when neither input needs a gradient) only
    the loss is computed.
    """
    hidden, weight = as_tensor(hidden), as_tensor(weight)
    _check_float("linear_cross_entropy", hidden)
    if weight.ndim != 2 or hidden.ndim < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} does not fit weight "
                         f"{tuple(weight.shape)} (expected hidden (..., C) and weight (V, C))")
    V, C = weight.shape
    xp = _xp(hidden)
    counted, y_safe, n = _checked_targets("linear_cross_entropy", targets, "hidden", hidden.shape, V, ignore_index,
                                          xp)
    h, kept = _counted_rows(hidden.data.reshape(-1, C), counted, n, xp)
    if kept is not None:
        counted, y_safe = counted[kept], y_safe[kept]
    W = weight.data
    N = h.shape[0]
    if block_rows is None:
        block_rows = max(1, speed.head_block_bytes(W) // (V * W.dtype.itemsize))   # the speed policy
    block_rows = int(block_rows)
    if block_rows < 1:
        raise ValueError(f"linear_cross_entropy: block_rows must be >= 1, got {block_rows}")
    want_grad = is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    weights = counted.astype(W.dtype) * (1.0 / n)           # dL/dloss_i: 1/N, or 0 for an ignored row
    total = xp.zeros((), dtype=xp.float64)
    gh = xp.empty_like(h) if want_grad and hidden.requires_grad else None
    gW = xp.empty_like(W) if want_grad and weight.requires_grad else None
    for start in range(0, N, block_rows):
        rows = slice(start, min(start + block_rows, N))
        hb, yb, wb = h[rows], y_safe[rows], weights[rows]
        z = hb @ W.T                                        # this block's logits (rows, V)
        picked = z[xp.arange(z.shape[0]), yb]
        m = z.max(axis=1)
        z -= m[:, None]
        xp.exp(z, out=z)                                    # z now holds exp(z - m)
        s = z.sum(axis=1)                                   # >= 1: the maximum contributes exp(0)
        per_row = m - picked
        per_row += xp.log(s)
        total += (per_row * counted[rows]).sum(dtype=xp.float64)
        if not want_grad:
            continue
        z *= (wb / s)[:, None]                              # D: w * softmax, row by row ...
        z[xp.arange(z.shape[0]), yb] -= wb                  # ... minus w * the one-hot target
        if gh is not None:
            xp.matmul(z, W, out=gh[rows])
        if gW is not None and start == 0:
            xp.matmul(z.T, hb, out=gW)                      # the first block writes dW ...
        elif gW is not None:
            gW += z.T @ hb                                  # ... the others add to it
    loss = xp.asarray(total / n, dtype=hidden.dtype)
    if not want_grad:
        return Tensor(loss)
    if gh is not None and kept is not None:                 # an ignored row's dL/dh is exactly 0
        full = xp.zeros((hidden.data.size // C, C), dtype=gh.dtype)
        full[kept] = gh
        gh = full

    def backward(g):
        # ``g`` is a scalar: 1, or a loss scale. Where reading it is free (the host), a product by 1.0
        # (exact anyway) is skipped, which saves a copy of dL/dW (npgpt.backend.speed).
        scale = None if speed.reading_is_free(g) and float(g) == 1.0 else g.astype(W.dtype)
        out_h = None if gh is None else (gh if scale is None else gh * scale).reshape(hidden.shape)
        out_W = None if gW is None else (gW if scale is None else gW * scale)
        return out_h, out_W

    return _make(loss, (hidden, weight), backward, fresh=True)


def _counted_rows(h, counted, n, xp):
    """``(rows of h whose target counts, their indices)``; ``(h, None)`` when every target counts.

    An ignored target (SFT's prompt and padding positions, docs/agent.md eq:sft-loss) adds nothing to the
    loss and its row of ``dL/dh`` is zero, so its logits need not be made at all: the head's three
    (rows, V) products shrink by the ignored share (about half of a chat batch). On a GPU, finding
    the rows reads their count back once (``flatnonzero``); the loss reads its value back anyway.
    """
    if n == h.shape[0]:
        return h, None
    kept = xp.flatnonzero(counted)
    return h[kept], kept


def _checked_targets(op, targets, what, shape, V, ignore_index, xp):
    """The targets of a loss over inputs of ``shape`` (..., last), checked: ``(counted, y_safe, n)``, flat, on ``xp``.

    Integers, of ``shape[:-1]``, each in ``0..V-1`` or ``ignore_index``, at
    least one counted. The checks read three numbers. They are taken where
    the targets are: host targets (a training batch) are checked before
    their one copy to the device, device targets cost one copy back.
    """
    y = as_array(targets)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must be integers, got dtype {y.dtype}")
    if tuple(y.shape) != tuple(shape[:-1]):
        raise ValueError(f"{op}: targets of shape {tuple(y.shape)} do not match {what} {tuple(shape)} "
                         f"(expected targets of shape {tuple(shape[:-1])})")
    y = y.reshape(-1)
    counted, y_safe = _counted_targets(y, ignore_index)
    n, low, high = _count_min_max(counted, y_safe)
    if n == 0:
        raise ValueError(f"{op}: every target equals ignore_index; the mean is undefined")
    if low < 0 or high >= V:
        raise ValueError(f"{op}: target ids must lie in 0..{V - 1} (or equal ignore_index={ignore_index})")
    if backend.array_module(y) is not xp:
        counted, y_safe = _counted_targets(xp.asarray(y), ignore_index)
    return counted, y_safe, n


def _counted_targets(y, ignore_index):
    """``(y != ignore_index, y with ignored entries set to 0)`` for flat targets ``y``."""
    counted = y != ignore_index
    return counted, backend.array_module(y).where(counted, y, 0)


def _count_min_max(counted, y_safe):
    """How many targets count, and the smallest and largest id: three ints, read from a device in one copy."""
    if y_safe.size == 0:
        return 0, 0, 0
    n, low, high = backend.read_scalars(counted.sum(), y_safe.min(), y_safe.max(), kind=int)
    return n, low, high


def binary_cross_entropy_with_logits(logits: Tensor, targets: Any) -> Tensor:
    """Mean binary cross-entropy of sigmoid outputs (docs/finetuning.md eq:bce):

    ``L = -1/N sum [y log s(z) + (1 - y) log(1 - s(z))]``
    ``  = 1/N sum [max(z, 0) - z y + log(1 + exp(-|z|))]``  (stable form).

    Gradient: ``dL/dz = (sigmoid(z) - y) / N``.
    """
    _check_float("binary_cross_entropy_with_logits", logits)
    xp = _xp(logits)
    y = xp.asarray(as_array(targets))
    if tuple(y.shape) != tuple(logits.shape):
        raise ValueError(f"binary_cross_entropy_with_logits: targets {tuple(y.shape)} do not match "
                         f"logits {tuple(logits.shape)}")
    y = y.astype(logits.dtype)
    z = logits.data
    n = z.size
    loss = (xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))).sum() / n

    def backward(g):
        return (((_stable_sigmoid(xp, z) - y) * (g / n)).astype(z.dtype),)

    return _make(xp.asarray(loss, dtype=logits.dtype), (logits,), backward)


# --------------------------------------------------------------- attention
@functools.lru_cache(maxsize=16)
def causal_mask(xp: Any, Tq: int, Tk: int) -> tuple[Array, Array]:
    """``(allowed, hidden)``, (Tq, Tk) booleans: query ``i`` may see key ``j`` iff ``j <= i + Tk - Tq``.

    Made once per shape and module and kept (read only): every layer of every step uses the same
    mask, and on a GPU making it is three kernel launches (docs/gpu.md, "The launch and traffic budget").
    """
    allowed = xp.tril(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq)
    return allowed, ~allowed


class KeyMask(NamedTuple):
    """An ``attn_mask`` prepared once for every layer: ``allowed`` (True = may attend) and its inverse
    ``hidden``, booleans broadcastable to (B, H, Tq, Tk).

    Given as a plain boolean array, the mask is inverted in every layer, and the probabilities are
    zeroed where masked after the softmax (for a query that sees no key at all). With
    ``every_query_sees_a_key`` the caller guarantees each query sees at least one key: a masked
    score is then the lowest float below a real one, its ``exp`` exactly 0, and the zeroing, which
    would change nothing, is skipped. The static decoding step (``npgpt.generation.cuda_graph``)
    uses it: two kernels per token for the mask instead of 26.
    """

    allowed: Array
    hidden: Array
    every_query_sees_a_key: bool = False


def _masks(xp: Any, Tq: int, Tk: int, causal: bool, attn_mask: Any) -> tuple[Array, Array, bool]:
    """``(allowed, hidden, zero)`` of attention's masks (None, None: no mask); ``zero``: whether the
    probabilities must be multiplied by ``allowed`` after the softmax (a padding mask)."""
    allowed = hidden = None
    if causal:
        allowed, hidden = causal_mask(xp, Tq, Tk)
    if attn_mask is None:
        return allowed, hidden, False
    if isinstance(attn_mask, KeyMask):
        mask, mask_hidden, zero = attn_mask.allowed, attn_mask.hidden, not attn_mask.every_query_sees_a_key
    else:
        mask, mask_hidden, zero = xp.asarray(as_array(attn_mask), dtype=bool), None, True
    if allowed is not None:
        allowed = allowed & mask
        return allowed, ~allowed, True
    return mask, ~mask if mask_hidden is None else mask_hidden, zero


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, attn_mask: Any = None,
                                 return_weights: bool = False, dropout_p: float = 0.0,
                                 rng: Any = None, compute_dtype: Any = None) -> Tensor | tuple[Tensor, Array]:
    """``dropout(softmax(Q K^T / sqrt(D) + mask)) V`` (docs/model.md eq:attention and eq:causal-mask).

    Shapes: ``q`` (B, H, Tq, D), ``k`` and ``v`` (B, H, Tk, D) -> (B, H, Tq, D).
    With ``causal``, query ``i`` sees keys ``j <= i + (Tk - Tq)``: when a KV
    cache supplies earlier keys, the Tq queries are the *last* Tq positions.
    ``attn_mask`` (boolean, broadcastable to (B, H, Tq, Tk), True = may
    attend, or a ``KeyMask`` prepared once for every layer) hides padding. Masked scores are set to the most negative finite
    number rather than ``-inf`` (which would give NaN), and with a padding
    mask the probabilities are zeroed where masked, so a query with nothing
    to attend to (a padding position) outputs zeros and passes no gradient.

    ``dropout_p > 0`` drops attention probabilities as GPT-2 does in training
    (``attn_pdrop``): ``P' = P * M / (1 - p)``, ``M ~ Bernoulli(1 - p)``, one
    float32 uniform per probability drawn from ``rng`` (a generator of the
    data's module), exactly as ``dropout(P, p, rng=rng)`` would draw them.

    Gradient, with ``P`` the attention probabilities, ``P'`` the dropped ones
    (``P' = P`` without dropout) and ``s = 1/sqrt(D)``: ``dV = P'^T g``,
    ``dP = (g V^T) * M / (1 - p)``, ``dS = P * (dP - sum(dP * P, -1))``,
    ``dQ = s dS K``, ``dK = s dS^T Q``. ``P`` (with dropout also the mask and
    ``P'``) are the only large arrays saved for the backward pass; they are
    freed with the graph.

    With ``return_weights=True`` also returns ``P`` (before dropout) as an
    array (for attention maps; it is not part of the graph).

    ``compute_dtype`` (mixed precision): the four products run on copies in
    that type; the scores are taken back to the inputs' type (float32) before
    the mask and the softmax, and the output and gradients come back in it.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"scaled_dot_product_attention: {name} must be (B, H, T, D), got {tuple(t.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not fit together")
    check_dropout(dropout_p)
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs Tq <= Tk, got {q.shape[2]} > {k.shape[2]}")
    out, P, grads = _attend(q.data, k.data, v.data, causal, attn_mask, dropout_p, rng, compute_dtype)
    backward = lambda g: grads(g, (q.requires_grad, k.requires_grad, v.requires_grad))  # noqa: E731
    result = _make(out, (q, k, v), backward, fresh=True)
    return (result, P) if return_weights else result


def packed_attention(qkv: Tensor, dropout_p: float = 0.0, rng: Any = None,
                     compute_dtype: Any = None) -> tuple[Tensor, Array]:
    """Causal ``scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])`` of one packed (3, B, H, T, D) tensor.

    Returns ``(output (B, H, T, D), P)``, the values and probabilities of the
    unpacked call. The difference is the backward pass: ``dQ``, ``dK`` and
    ``dV`` are written by their products straight into the three slices of one
    (3, B, H, T, D) array, the gradient of ``qkv``. Split into three tensors
    first, each piece's backward would make a zero array of the whole of
    ``qkv`` and the walk would add the three (docs/gpu.md, "The launch and
    traffic budget": 8 launches and ~9 passes over qkv per layer, now none).
    """
    if qkv.ndim != 5 or qkv.shape[0] != 3:
        raise ValueError(f"packed_attention: qkv must be (3, B, H, T, D), got {tuple(qkv.shape)}")
    check_dropout(dropout_p)
    a = qkv.data
    out, P, grads = _attend(a[0], a[1], a[2], True, None, dropout_p, rng, compute_dtype)

    def backward(g):
        into = _xp(qkv).empty(qkv.shape, dtype=qkv.dtype)
        grads(g, (True, True, True), into)
        return (into,)

    return _make(out, (qkv,), backward, fresh=True), P


def _attend(q: Array, k: Array, v: Array, causal: bool, attn_mask: Any, dropout_p: float, rng: Any,
            compute_dtype: Any) -> tuple[Array, Array, Any]:
    """The arrays of attention (docs/model.md eq:attention and eq:causal-mask): ``(output, P, grads)``.

    ``grads(g, need, into=None)`` returns ``(dQ, dK, dV)`` (None where ``need`` says so), each
    product written into ``into[0..2]`` when a (3, B, H, T, D) array is given.
    """
    xp = backend.array_module(q)
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D)
    dtype = q.dtype
    cd = np.dtype(compute_dtype) if compute_dtype is not None else dtype
    qc, kc, vc = (t if t.dtype == cd else t.astype(cd) for t in (q, k, v))
    scores = (qc @ kc.swapaxes(-1, -2)).astype(dtype, copy=False)     # (B, H, Tq, Tk)
    allowed, hidden, zero = _masks(xp, Tq, Tk, causal, attn_mask)
    _scale_and_hide(scores, scale, hidden)   # in place: the scores are this op's own array
    P = softmax_array(scores, overwrite=True)           # attention probabilities
    if zero:
        P *= allowed            # only changes rows where every key is masked
    keep = _dropout_mask(xp, rng, P.shape, P.dtype, dropout_p) if dropout_p > 0 else None
    dropped = P if keep is None else P * keep
    dropped_c = dropped if cd == dtype else dropped.astype(cd)
    out = (dropped_c @ vc).astype(dtype, copy=False)

    def product(a, b, into, i):
        if into is None:
            return (a @ b).astype(dtype, copy=False)
        if cd == dtype:
            return xp.matmul(a, b, out=into[i])
        into[i] = a @ b                 # a mixed-precision product comes back in the inputs' type
        return into[i]

    def grads(g, need, into=None):
        gc = g if cd == dtype else g.astype(cd)
        gv = product(dropped_c.swapaxes(-1, -2), gc, into, 2) if need[2] else None
        dP = (gc @ vc.swapaxes(-1, -2)).astype(dtype, copy=False)
        if keep is not None:
            dP *= keep
        _scores_gradient(dP, speed.row_dots(dP, P), P, scale)
        dS = dP                     # dS = P * (dP - sum(dP * P)) * s, written over dP
        dSc = dS if cd == dtype else dS.astype(cd)
        gq = product(dSc, kc, into, 0) if need[0] else None
        gk = product(dSc.swapaxes(-1, -2), qc, into, 1) if need[1] else None
        return gq, gk, gv

    return out, P, grads


@fuse
def _scale_and_hide(xp, scores, scale, hidden):
    """``scores <- scores s``, then the lowest float where ``hidden`` (None: no mask), in place: one kernel on a GPU."""
    scores *= scale
    if hidden is not None:
        xp.copyto(scores, xp.finfo(scores.dtype).min, where=hidden)


@fuse
def _scores_gradient(xp, dP, row_dots, P, scale):
    """``dP <- P (dP - sum(dP P)) s``, the scores' gradient written over ``dP``: one kernel on a GPU
    (which returns nothing: a returned array would be written once more)."""
    dP -= row_dots
    dP *= P
    dP *= scale
