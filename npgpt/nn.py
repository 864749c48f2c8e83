"""Layers with parameters: ``Module`` and the few building blocks GPT-2 needs.

Companion of ``docs/model.md`` (section "Modules and parameters").

A ``Module`` is a container that remembers the ``Parameter`` s and the
sub-modules assigned to its attributes, in the order they were assigned.
That is all it takes to name every weight of a network by its attribute path
(``h.0.attn.c_attn.weight``), which in turn is all a checkpoint needs: a
state dict is ``{dotted name: array}``. The layers below only hold weights;
the arithmetic, and its gradient, lives in ``npgpt.functional``.
"""

import numpy as np

import npgpt.functional as F
from npgpt import backend
from npgpt.autograd import Tensor, as_tensor


class Parameter(Tensor):
    """A Tensor that is a trainable weight: it requires a gradient from birth."""

    def __init__(self, data, name=None):
        super().__init__(data, requires_grad=True, name=name)


class Module:
    """Base class of every layer: registers parameters and sub-modules by attribute."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before assigning {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix=""):
        """``(dotted name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self):
        """``(dotted name, Parameter)`` pairs, e.g. ``("h.0.ln_1.weight", p)``.

        A parameter shared by two modules is listed once, under its first name.
        """
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        """The number of trainable scalars (shared parameters counted once)."""
        return sum(int(p.size) for p in self.parameters())

    # ------------------------------------------------------------- state
    def state_dict(self):
        """``{dotted name: array}``: the parameters' arrays themselves (not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters in place (dtype and device of the parameter kept).

        With ``strict`` every parameter must be present and no other key may be;
        the error lists the missing and unexpected names. A shape mismatch is
        always an error naming the parameter. Returns ``(missing, unexpected)``.
        """
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)} in the state dict "
                                 f"but {tuple(p.shape)} in the model")
        for name, p in own.items():        # only write once everything has been checked
            if name in state_dict:
                value = state_dict[name]
                value = value.data if isinstance(value, Tensor) else value
                p.data[...] = backend.to_device(value, p.device).astype(p.dtype, copy=False)
        return missing, unexpected

    # -------------------------------------------------------- mode, device
    def train(self, mode=True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move every parameter (and its gradient) to ``device`` in place; returns self.

        In place, so an optimizer built before the move still holds the same
        ``Parameter`` objects.
        """
        device = backend.check_device(device)
        for p in self.parameters():
            if p.device != device:
                p.data = backend.to_device(p.data, device)
                if p.grad is not None:
                    p.grad = backend.to_device(p.grad, device)
        return self

    @property
    def device(self):
        params = self.parameters()
        return params[0].device if params else "cpu"

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"

    def extra_repr(self):
        return ""


class ModuleList(Module):
    """A list of modules, registered under the names ``"0"``, ``"1"``, ..."""

    def __init__(self, modules=()):
        super().__init__()
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        self._modules[str(len(self._items))] = module
        self._items.append(module)
        return self

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)


def _float_init(shape, std, rng):
    """Normal(0, std) float32 weights drawn from a NumPy generator."""
    if not std:
        return np.zeros(shape, np.float32)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(std)       # in place: GPT-2's tables are hundreds of MB
    return w


class Linear(Module):
    """``y = x W + b`` (docs/model.md eq. 1) with ``W`` stored (in, out).

    Weights ~ Normal(0, ``std``) (GPT-2 uses 0.02), bias 0, drawn from ``rng``
    (a NumPy ``Generator``; by default a fresh one seeded 0, so every run of a
    script builds the same weights).
    """

    def __init__(self, in_features, out_features, bias=True, std=0.02, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(_float_init((in_features, out_features), std, rng))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    def forward(self, x):                       # (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num`` vectors of size ``dim``; ``y = W[ids]`` (docs/model.md eq. 8)."""

    def __init__(self, num_embeddings, embedding_dim, std=0.02, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(_float_init((num_embeddings, embedding_dim), std, rng))

    def forward(self, ids):                     # int (...) -> (..., dim)
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis (docs/model.md eq. 6); weight 1, bias 0."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.zeros(dim, np.float32) + 1.0)    # gains start at 1
        self.bias = Parameter(np.zeros(dim, np.float32))

    def forward(self, x):                       # (..., dim) -> (..., dim)
        return F.layer_norm(as_tensor(x), self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Inverted dropout with probability ``p``, active only in training mode.

    The module owns its random generator (seeded with ``seed``), so two
    models built with the same seeds draw the same masks. One generator is
    kept per array module, since a NumPy generator cannot fill CuPy arrays.
    """

    def __init__(self, p=0.0, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.seed = float(p), seed
        self._rngs = {}

    def rng(self, xp):
        if xp not in self._rngs:
            self._rngs[xp] = backend.default_rng(self.seed, xp)
        return self._rngs[xp]

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        x = as_tensor(x)
        return F.dropout(x, self.p, training=True, rng=self.rng(backend.array_module(x.data)))

    def extra_repr(self):
        return f"p={self.p}"
