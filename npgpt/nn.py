"""Layers with parameters: ``Module`` and the few building blocks GPT-2 needs.

Companion of ``docs/model.md`` (section "Modules and parameters").

A ``Module`` is a container that remembers the ``Parameter`` s and the
sub-modules assigned to its attributes, in the order they were assigned.
That is all it takes to name every weight of a network by its attribute path
(``h.0.attn.c_attn.weight``), which in turn is all a checkpoint needs: a
state dict is ``{dotted name: array}``. The layers below only hold weights;
the arithmetic, and its gradient, lives in ``npgpt.functional``.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend
from npgpt.autograd import Tensor, as_tensor, is_grad_enabled
from npgpt.backend import philox
from npgpt.io.inputs import as_array


class Parameter(Tensor):
    """A Tensor that is a trainable weight: it requires a gradient from birth."""

    def __init__(self, data: Any, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)


class Module:
    """Base class of every layer: registers parameters and sub-modules by attribute."""

    def __init__(self) -> None:
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

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """``(dotted name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` pairs, e.g. ``("h.0.ln_1.weight", p)``.

        A parameter shared by two modules is listed once, under its first name.
        """
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """The number of trainable scalars (shared parameters counted once)."""
        return sum(int(p.size) for p in self.parameters())

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{dotted name: array}``: the parameters' arrays themselves (not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
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
            value = as_array(value)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)} in the state dict "
                                 f"but {tuple(p.shape)} in the model")
        for name, p in own.items():        # only write once everything has been checked
            if name in state_dict:
                value = state_dict[name]
                value = as_array(value)
                p.data[...] = backend.to_device(value, p.device).astype(p.dtype, copy=False)
        return missing, unexpected

    # -------------------------------------------------------- mode, device
    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, device: str) -> "Module":
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
    def device(self) -> str:
        params = self.parameters()
        return params[0].device if params else "cpu"

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


class ModuleList(Module):
    """A list of modules, registered under the names ``"0"``, ``"1"``, ..."""

    def __init__(self, modules: Iterable["Module"] = ()):
        super().__init__()
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, module: "Module") -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        self._modules[str(len(self._items))] = module
        self._items.append(module)
        return self

    def __getitem__(self, i: int) -> "Module":
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator["Module"]:
        return iter(self._items)


def _float_init(shape, std, rng):
    """Normal(0, std) float32 weights drawn from a NumPy generator."""
    if not std:
        return np.zeros(shape, np.float32)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(std)       # in place: GPT-2's tables are hundreds of MB
    return w


class ZeroGenerator:
    """Stands in for a NumPy generator when the weights will be overwritten anyway (``GPT(init=False)``)."""

    @staticmethod
    def standard_normal(shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype)


class Linear(Module):
    """``y = x W + b`` (docs/model.md eq:affine) with ``W`` stored (in, out).

    Weights ~ Normal(0, ``std``) (GPT-2 uses 0.02), bias 0, drawn from ``rng``
    (a NumPy ``Generator``; by default a fresh one seeded 0, so every run of a
    script builds the same weights). ``compute_dtype`` (``None``: the input's
    own) is the type the products run in, for mixed precision (``F.linear``).
    """

    compute_dtype: Any = None
    # Prompt lookup's verifying pass sets here, for the pass only, a copy of the weight in cache-sized
    # panels (npgpt.generation.panels.PanelledWeight): 2-16 rows then cost about what one row costs.
    panels: Any = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02,
                 rng: np.random.Generator | None = None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(_float_init((in_features, out_features), std, rng))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    def forward(self, x: Any) -> Tensor:        # (..., in) -> (..., out)
        if self.panels is not None and not is_grad_enabled():
            return self.panels.linear(as_tensor(x), self.bias)
        return F.linear(x, self.weight, self.bias, compute_dtype=self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num`` vectors of size ``dim``; ``y = W[ids]`` (docs/model.md eq:embedding)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 0.02,
                 rng: np.random.Generator | None = None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(_float_init((num_embeddings, embedding_dim), std, rng))

    def forward(self, ids: Any) -> Tensor:   # int (...) -> (..., dim)
        """``W[ids]``; the ids' values are trusted (see ``F.embedding``)."""
        return F.embedding(ids, self.weight)

    def table(self) -> Tensor:
        """The table as the model uses it (a tied LM head too): ``weight`` itself; with trainable token
        rows (``npgpt.finetuning.trainable_tokens``) the table with those rows put in."""
        return self.weight

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis (docs/model.md eq:layer-norm); weight 1, bias 0."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.zeros(dim, np.float32) + 1.0)    # gains start at 1
        self.bias = Parameter(np.zeros(dim, np.float32))

    def forward(self, x: Any) -> Tensor:        # (..., dim) -> (..., dim)
        return F.layer_norm(as_tensor(x), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


# The (step, micro-batch) that training has keyed dropout with (``dropout_key``), or None.
_step_key: tuple[int, int] | None = None


class dropout_key:  # noqa: N801  (used as a function: ``with dropout_key(step, micro_batch):``)
    """Key every dropout mask drawn inside by ``(step, micro_batch)``: ``with nn.dropout_key(7, 0): ...``.

    The training step (``npgpt.training.engine.optimizer_step``) runs each
    micro-batch's forward pass inside one, so mask ``d`` of a module in that
    micro-batch is Philox of (the module's seed; step, micro-batch, ``d``)
    (docs/gpu.md eq:philox-round): a function of where training is, not of how many
    masks were drawn before. A run resumed at any step draws the masks the
    uninterrupted run drew there, at once, with no state to restore; two
    micro-batches (or two ranks' rows, which the step numbers apart) differ.
    Process-wide, not per thread: one training step runs at a time.
    """

    def __init__(self, step: int, micro_batch: int = 0) -> None:
        for name, value in (("step", step), ("micro_batch", micro_batch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2 ** 32:
                raise ValueError(f"dropout_key: {name} must be a whole number in 0..2**32-1, got {value!r}")
        self.key = (int(step), int(micro_batch))

    def __enter__(self) -> "dropout_key":
        global _step_key
        self.outer, _step_key = _step_key, self.key
        return self

    def __exit__(self, *exc: Any) -> None:
        global _step_key
        _step_key = self.outer


class CounterGenerator:
    """A dropout module's random numbers on one array module: Philox, keyed by the module's seed.

    Inside :class:`dropout_key` (training), draw ``d`` of the module in that
    micro-batch is ``philox.uniform(size, key=seed, stream=step + 2**32
    micro_batch, draw=d)``. Outside one, draw ``n`` of the module (its ``n``-th
    mask) is ``philox.uniform(size, key=seed, stream=n)``. Either way a
    function of a few numbers only (``npgpt.backend.philox``, docs/gpu.md eq:philox-round):
    the masks are the same on NumPy, on the CuPy stand-in and on any GPU, and
    nothing is replayed on resume. The counts live in the :class:`Dropout`
    module, shared by every array module it ever draws on.
    """

    def __init__(self, xp: Any, owner: "Dropout") -> None:
        self.xp, self.owner = xp, owner

    def random(self, shape: Any, dtype: Any = np.float32) -> Any:
        """Uniform numbers in [0, 1) of ``shape`` (float32 or float64): the module's next draw."""
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        owner, key = self.owner, _step_key
        if key is None:
            values = philox.uniform(int(np.prod(shape)), owner.seed, owner.draws, self.xp, dtype)
        else:
            if owner._keyed != key:                  # the first mask of this micro-batch
                owner._keyed, owner._keyed_draws = key, 0
            stream = key[0] + (key[1] << 32)
            values = philox.uniform(int(np.prod(shape)), owner.seed, stream, self.xp, dtype, draw=owner._keyed_draws)
            owner._keyed_draws += 1
        owner.draws += 1
        return values.reshape(shape)


def child_seeds(seed: int | None, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed``: ``numpy.random.SeedSequence(seed).spawn(n)``.

    Each child hashes the seed with its own index, so no two streams overlap. ``default_rng(seed)``
    draws a GPT's weights, child 0 seeds its dropout modules, child 1 a classifier's head.
    """
    return [int(child.generate_state(1, np.uint64)[0]) for child in np.random.SeedSequence(seed).spawn(n)]


class Dropout(Module):
    """Inverted dropout with probability ``p``, active only in training mode.

    The masks come from a counter-based generator (:class:`CounterGenerator`):
    in training (inside :class:`dropout_key`) a mask is a function of the
    module's ``seed``, the step, the micro-batch and its number within it;
    elsewhere the ``n``-th mask the module draws is a function of its
    ``seed`` and of ``n`` only; the same on every device. ``get_rng_state`` is ``{"seed",
    "draws"}``; ``set_rng_state`` continues from it at once, so a resumed
    training run draws the masks the uninterrupted run would have drawn.
    Without a seed, fresh entropy is drawn once.
    """

    def __init__(self, p: float = 0.0, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy)
        self.seed &= 2 ** 64 - 1                      # Philox's key is 64 bits
        self.draws = 0                                # masks drawn so far: the counter of the next one
        self._keyed: tuple[int, int] | None = None    # the dropout_key of the last keyed mask ...
        self._keyed_draws = 0                         # ... and how many masks were drawn under it

    def rng(self, xp: Any) -> CounterGenerator:
        """The generator for arrays of module ``xp`` (``numpy`` or ``cupy``): the module's next draws."""
        return CounterGenerator(xp, self)

    def get_rng_state(self) -> dict | None:
        """``{"seed": int, "draws": int}``, JSON-serialisable; ``None`` if the module never drew."""
        return {"seed": self.seed, "draws": self.draws} if self.draws else None

    def set_rng_state(self, state: dict | None) -> None:
        """Continue from a ``get_rng_state()`` result (``None``: start again from the seed).

        A state written before the counter-based generator (``{"seed", "generators": {module:
        {"draws": [[count, dtype, times], ...]}}}``) is taken as its number of draws: the run goes
        on with as many masks drawn, from the new generator.
        """
        if state is None:
            self.draws = 0
            return
        if isinstance(state, dict) and "bit_generator" in state and "state" in state:
            state = {"seed": self.seed, "draws": 0}       # a bare NumPy generator state (the oldest checkpoints)
        if not isinstance(state, dict) or "seed" not in state or not ("draws" in state or "generators" in state):
            raise ValueError("Dropout.set_rng_state expects a dict from get_rng_state() (or None)")
        if "draws" in state:
            draws = state["draws"]
        else:
            draws = max((sum(int(t) for _, _, t in g.get("draws", [])) for g in state["generators"].values()),
                        default=0)
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
            raise ValueError(f"Dropout.set_rng_state: draws must be a whole number >= 0, got {draws!r}")
        self.seed, self.draws = int(state["seed"]) & (2 ** 64 - 1), draws

    def forward(self, x: Any) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        x = as_tensor(x)
        return F.dropout(x, self.p, training=True, rng=self.rng(backend.array_module(x.data)))

    def extra_repr(self) -> str:
        return f"p={self.p}"
