"""GPT-2: token and position embeddings, a stack of pre-LN Transformer blocks, a tied LM head.

Companion of ``docs/model.md``.

The architecture is exactly OpenAI's GPT-2, with Hugging Face's parameter names
(``wte.weight``, ``h.0.attn.c_attn.weight``, ...), so a GPT-2 checkpoint maps
onto it name for name (``npgpt.io.checkpoint``). Linear weights are stored
(in, out), GPT-2's own "Conv1D" layout, so none has to be transposed.

The model is two parts, each computed in one place: the **trunk**
(``GPT.trunk``: embeddings, blocks, final layer norm -> hidden states
(B, T, C)) and the **head** (``GPT.lm_head``: hidden states -> logits, the
tied ``wte``). ``model(idx)`` is ``lm_head(trunk(idx))``; the classifier, the
decoding loop and ``npgpt.viz`` call the same trunk. With a ``KVCache`` the
keys and values of earlier positions are read from preallocated arrays
instead of being recomputed (docs/model.md eq. 10), so each generated token
costs O(T) attention work instead of O(T^2).
"""

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend, generation, nn
from npgpt.autograd import Tensor, as_tensor, is_grad_enabled
from npgpt.io import checkpoint, inputs

Array = Any  # a numpy.ndarray or a cupy.ndarray
HF_PREFIX = "transformer."   # GPT-2's tensor names in Hugging Face files: transformer.h.0.attn.c_attn.weight


def child_seeds(seed: int | None, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed``, as 64-bit integers.

    ``numpy.random.SeedSequence(seed).spawn(n)``: each child hashes the seed
    together with its own index, so no two children's streams overlap, nor
    a child's with the parent's (as the stream of ``seed + 1`` is shared by
    whatever else is seeded ``seed + 1``). One seed grows a tree:
    ``default_rng(seed)`` draws a GPT's weights, child 0 seeds its dropout
    modules (a grandchild each), child 1 a classifier's head.
    """
    return [int(child.generate_state(1, np.uint64)[0]) for child in np.random.SeedSequence(seed).spawn(n)]


@dataclass
class GPTConfig:
    """The hyper-parameters of a GPT-2 model (defaults: GPT-2 small, 124M parameters).

    ``dropout`` is used for the embedding, attention-probability and residual
    dropouts alike (GPT-2's ``embd_pdrop``, ``attn_pdrop``, ``resid_pdrop``).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")

    def num_parameters(self) -> int:
        """Parameter count from the shapes alone (docs/model.md eq. 11):

        ``V C + P C + L (12 C^2 + 13 C) + 2 C``, the LM head tied to ``wte``.
        """
        V, P, L, C = self.vocab_size, self.block_size, self.n_layer, self.n_embd
        return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C

    def to_dict(self) -> dict:
        """The fields as a plain dict (for ``config.json``)."""
        return asdict(self)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the model's weights (GPT-2's names without ``transformer.``), allocating nothing.

        The same names and shapes as ``GPT(config).named_parameters()`` (tested), so
        a checkpoint's header can be compared with its ``config.json`` before a
        model is built.
        """
        V, P, C = self.vocab_size, self.block_size, self.n_embd
        block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
                 "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
                 "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
                 "mlp.c_proj.bias": (C,)}
        shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
        for i in range(self.n_layer):
            shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
        return shapes

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike) -> "GPTConfig":
        """The config of a GPT-2 checkpoint directory (or shipped model), from its ``config.json``."""
        directory = checkpoint.resolve(name_or_dir)
        try:
            return cls(**checkpoint.read_config(directory))
        except ValueError as exc:
            raise checkpoint.CheckpointError(f"{directory / checkpoint.CONFIG_NAME}: {exc}") from None


class KVCache:
    """Keys and values of the positions seen so far, per layer, preallocated.

    ``keys[i]`` and ``values[i]`` are (B, H, capacity, D) arrays; positions
    ``0 .. length-1`` are filled. Writing a new token's key is one slice
    assignment, never a concatenation, so a generation of N tokens copies
    O(N) and not O(N^2) numbers. No gradient flows through a cache: use it
    under ``no_grad()``.
    """

    def __init__(self, config: GPTConfig, batch_size: int, xp: Any = np, dtype: Any = np.float32,
                 capacity: int | None = None):
        H, D = config.n_head, config.n_embd // config.n_head
        self.capacity = int(capacity or config.block_size)
        shape = (int(batch_size), H, self.capacity, D)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.batch_size = int(batch_size)
        self.length = 0

    def update(self, layer: int, k: Array, v: Array) -> tuple[Array, Array]:
        """Store ``k, v`` (B, H, T, D) after the cached positions; return all keys and values so far."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KVCache: {stop} positions do not fit a cache of capacity {self.capacity}")
        self.keys[layer][:, :, start:stop] = k
        self.values[layer][:, :, start:stop] = v
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]   # (B, H, stop, D)

    def append_qkv(self, layer: int, qkv: Array, n_head: int) -> tuple[Array, Array, Array]:
        """Split ``qkv`` (B, T, 3C) = [q | k | v] into heads, store k and v; return ``q`` (B, H, T, D)
        and all keys and values so far (B, H, length + T, D).

        The decoding step's attention input without autograd's reshape/transpose
        wrappers: ``q`` is a view of ``qkv``, and k and v are copied once, into
        the cache (``update``).
        """
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
                   for i in range(3))
        k_all, v_all = self.update(layer, k, v)
        return q, k_all, v_all

    def reset(self) -> None:
        """Forget every position (the arrays are kept and overwritten)."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (docs/model.md eqs. 4, 5 and 9)."""

    compute_dtype: Any = None      # the type of the attention products (mixed precision; None: the input's)

    def __init__(self, config: GPTConfig, rng: Any, seed: int):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = nn.Linear(C, 3 * C, rng=rng)                 # x -> [q | k | v]
        # Residual projections start smaller, so the residual stream's variance
        # does not grow with depth (GPT-2: std 0.02 / sqrt(2 n_layer)).
        self.c_proj = nn.Linear(C, C, std=0.02 / math.sqrt(2 * config.n_layer), rng=rng)
        attn_seed, resid_seed = child_seeds(seed, 2)
        self.attn_dropout = nn.Dropout(config.dropout, seed=attn_seed)
        self.resid_dropout = nn.Dropout(config.dropout, seed=resid_seed)

    def forward(self, x: Tensor, layer: int = 0, cache: KVCache | None = None,
                attn_mask: Array | None = None) -> tuple[Tensor, Array]:
        """``x`` (B, T, C) -> (output (B, T, C), attention probabilities (B, H, T, T_keys)).

        ``attn_mask``: boolean, broadcastable to (B, H, T, T_keys), True = may attend
        (hides padding; see ``GPT.trunk``). In training mode the probabilities
        are dropped inside the fused attention op (``dropout_p``).
        """
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        qkv = self.c_attn(x)                                           # (B, T, 3C) = [q | k | v]
        if cache is not None:
            # Decoding: no gradient flows (the cache is inference-only), so the heads
            # are split on the arrays and the new keys and values go straight into the
            # cache (``KVCache.append_qkv``), without autograd's wrappers.
            q, k, v = (Tensor(a) for a in cache.append_qkv(layer, qkv.data, H))
        else:
            # Split the channels into H heads of D: (B, T, C) -> (B, T, H, D) -> (B, H, T, D).
            q, k, v = (t.reshape(B, T, H, D).transpose(0, 2, 1, 3) for t in qkv.split(3, axis=2))
        drop = self.attn_dropout
        p = drop.p if drop.training else 0.0
        rng = drop.rng(backend.array_module(x.data)) if p > 0 else None
        # One query (a decoding step) is the last position: it may see every key, so the
        # causal mask would allow everything and is not built (the same result).
        y, probs = F.scaled_dot_product_attention(q, k, v, causal=T > 1, attn_mask=attn_mask, return_weights=True,
                                                  dropout_p=p, rng=rng, compute_dtype=self.compute_dtype)
        if cache is not None:
            y = Tensor(y.data.transpose(0, 2, 1, 3).reshape(B, T, C))  # a view when T == 1
        else:
            y = y.transpose(0, 2, 1, 3).reshape(B, T, C)               # heads side by side again
        return self.resid_dropout(self.c_proj(y)), probs


class MLP(nn.Module):
    """Position-wise feed-forward network: ``c_proj(gelu(c_fc(x)))``, 4x wide inside."""

    def __init__(self, config: GPTConfig, rng: Any, seed: int):
        super().__init__()
        C = config.n_embd
        self.c_fc = nn.Linear(C, 4 * C, rng=rng)
        self.c_proj = nn.Linear(4 * C, C, std=0.02 / math.sqrt(2 * config.n_layer), rng=rng)
        self.dropout = nn.Dropout(config.dropout, seed=seed)

    def forward(self, x: Tensor) -> Tensor:                            # (B, T, C) -> (B, T, C)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LN Transformer block (docs/model.md eq. 9):

    ``x = x + attn(ln_1(x))``, then ``x = x + mlp(ln_2(x))``.
    """

    def __init__(self, config: GPTConfig, rng: Any, seed: int):
        super().__init__()
        attn_seed, mlp_seed = child_seeds(seed, 2)
        self.ln_1 = nn.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, rng, attn_seed)
        self.ln_2 = nn.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config, rng, mlp_seed)

    def forward(self, x: Tensor, layer: int = 0, cache: KVCache | None = None,
                attn_mask: Array | None = None) -> tuple[Tensor, Array]:
        """(B, T, C) -> ((B, T, C), this block's attention probabilities (B, H, T, T_keys))."""
        a, probs = self.attn(self.ln_1(x), layer, cache, attn_mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, probs


class _Zeros:
    """Stands in for a random generator when the weights will be overwritten anyway."""

    @staticmethod
    def standard_normal(shape, dtype=np.float64):
        return np.zeros(shape, dtype=dtype)


class GPT(nn.Module):
    """GPT-2 language model. ``model(idx)`` -> logits (B, T, vocab_size).

    ``compute_dtype``: see ``set_compute_dtype`` (mixed precision).

    Weights are initialised as GPT-2's: Normal(0, 0.02), residual projections
    Normal(0, 0.02 / sqrt(2 n_layer)), biases 0, layer-norm gains 1, all drawn
    from ``numpy.random.default_rng(seed)`` (float32, on the CPU; move the
    model with ``.to("cuda")``). The dropout modules' seeds are children of
    ``seed`` (``child_seeds``). ``init=False`` skips the random draw and
    leaves the weights at zero, for a checkpoint to be loaded over them (for
    GPT-2 small that saves drawing 124 million random numbers).
    """

    compute_dtype: Any = None

    def __init__(self, config: GPTConfig | None = None, seed: int = 0, *, init: bool = True):
        super().__init__()
        config = config if config is not None else GPTConfig()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        rng = np.random.default_rng(seed) if init else _Zeros()
        C = config.n_embd
        dropout_seed = child_seeds(seed, 1)[0]
        seeds = child_seeds(dropout_seed, 1 + config.n_layer)          # embedding dropout, then one per block
        self.wte = nn.Embedding(config.vocab_size, C, rng=rng)        # token table, also the LM head
        self.wpe = nn.Embedding(config.block_size, C, rng=rng)        # learned position table
        self.drop = nn.Dropout(config.dropout, seed=seeds[0])
        self.h = nn.ModuleList(Block(config, rng, seed=seeds[i + 1]) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, config.layer_norm_epsilon)

    @property
    def device(self) -> str:
        """Where the model's weights live (looked up once per forward pass, so kept cheap)."""
        return self.wte.weight.device

    # ------------------------------------------------------------ inputs
    def check_ids(self, idx: Any, past_length: int = 0) -> Array:
        """Validate token ids and put them on the model's device.

        An integer (B, T) array (or Tensor, or nested lists), T >= 1, ids in
        ``0..vocab_size-1`` and ``T + past_length <= block_size``.
        """
        idx = inputs.token_batch(idx, self.config.vocab_size, self.config.block_size, past_length)
        return backend.to_device(idx, self.device)

    def check_inputs(self, idx: Any, *, attention_mask: Any = None, position_ids: Any = None,
                     inputs_embeds: Any = None, cache: KVCache | None = None
                     ) -> tuple[Array, Array | None, Array | None, Tensor | None]:
        """Validate the inputs of ``trunk`` and convert them: ``(idx, attention_mask, position_ids, inputs_embeds)``.

        The ids as ``check_ids``; the mask as 0/1 integers of shape
        (B, cached + T); the position ids (B, T) or (T,) in ``0..block_size-1``;
        the embeddings a (B, T, C) Tensor; arrays on the model's device. What
        ``trunk`` runs with ``validate=True``; a caller that passes
        ``validate=False`` has called it (or built its inputs itself).
        """
        past = 0
        if cache is not None:
            if is_grad_enabled():
                raise RuntimeError("a KV cache is for inference: no gradient flows through it; "
                                   "call the model under npgpt.no_grad()")
            past = cache.length
        idx = self.check_ids(idx, past)
        B, T = idx.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"the KV cache holds {cache.batch_size} sequences but idx has batch {B}")
        if attention_mask is not None:
            attention_mask = backend.to_device(inputs.check_attention_mask(attention_mask, (B, past + T)),
                                               self.device)
        if position_ids is not None:
            positions = inputs.as_array(position_ids)
            if tuple(positions.shape) not in ((B, T), (T,)):
                raise ValueError(f"position_ids of shape {tuple(positions.shape)} do not fit token ids {(B, T)}")
            inputs.check_token_ids(positions, self.config.block_size, what="position id")
            position_ids = backend.to_device(positions, self.device)
        if inputs_embeds is not None:
            inputs_embeds = as_tensor(inputs_embeds)
            if tuple(inputs_embeds.shape) != (B, T, self.config.n_embd):
                raise ValueError(f"inputs_embeds of shape {tuple(inputs_embeds.shape)}, expected "
                                 f"{(B, T, self.config.n_embd)}")
        return idx, attention_mask, position_ids, inputs_embeds

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``capacity`` positions (default
        ``block_size``) on the model's device.

        A generation that will stop short of ``block_size`` asks for just what it
        needs: GPT-2 small's full cache is 75 MB per row.
        """
        xp = backend.array_module(self.wte.weight.data)
        return KVCache(self.config, batch_size, xp=xp, dtype=self.wte.weight.dtype, capacity=capacity)

    # ------------------------------------------------------- trunk, head
    def trunk(self, idx: Any, *, attention_mask: Any = None, position_ids: Any = None, inputs_embeds: Any = None,
              cache: KVCache | None = None, return_attention: bool = False,
              validate: bool = True) -> Tensor | tuple[Tensor, list[Array]]:
        """The hidden states ``ln_f(x)`` (B, T, C) after the last block: everything but the head.

        ``x_0 = drop(wte[idx] + wpe[positions])``, then every block, then the
        final layer norm (docs/model.md eq. 9), the only place it is applied.

        ``attention_mask`` (B, T), 1 = real token, 0 = padding: no position
        attends to a padding position. ``position_ids`` (B, T) int replaces
        ``0..T-1`` (a left-padded sequence counts its positions from its first
        real token; docs/finetuning.md, section "Padding"). ``inputs_embeds``
        (B, T, C) replaces the token-embedding lookup ``wte[idx]`` (gradients
        with respect to the embeddings, for saliency). ``cache`` (a
        ``KVCache``, see ``new_cache``) holds the keys and values of earlier
        positions: ``idx`` then continues the cached sequence, its positions
        start at ``cache.length``, the cache grows by T, and a mask covers the
        cached positions too, (B, cache.length + T).

        With ``return_attention`` returns ``(hidden, attentions)``, one
        (B, H, T, T_keys) array of attention probabilities per layer.

        The inputs are checked and converted by ``check_inputs``;
        ``validate=False`` skips that for a caller that has (the decoding
        loop), and then expects arrays on the model's device.
        """
        if validate:
            idx, attention_mask, position_ids, inputs_embeds = self.check_inputs(
                idx, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                cache=cache)
        T = idx.shape[1]
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = backend.array_module(self.wte.weight.data).arange(past, past + T)
        tokens = self.wte(idx, validate=False) if inputs_embeds is None else inputs_embeds     # (B, T, C)
        x = self.drop(tokens + self.wpe(position_ids, validate=False))                        # (B, T, C)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = (attention_mask != 0)[:, None, None, :]      # (B, 1, 1, T_keys): hides padded keys
        attentions = []
        for layer, block in enumerate(self.h):
            x, probs = block(x, layer, cache, attn_mask)
            if return_attention:
                attentions.append(probs)
        if cache is not None:
            cache.length += T
        hidden = self.ln_f(x)
        return (hidden, attentions) if return_attention else hidden

    def lm_head(self, hidden: Tensor) -> Tensor:
        """Logits ``h wte^T`` (..., vocab_size) from hidden states (..., C): the head tied to ``wte``."""
        return F.linear(hidden, self.wte.weight.T, compute_dtype=self.compute_dtype)

    def loss(self, idx: Any, targets: Any, *, ignore_index: int = -100, attention_mask: Any = None,
             validate: bool = True) -> Tensor:
        """The training loss: mean cross-entropy of ``targets`` under the logits of ``idx`` (docs/training.md eq. 2).

        Equal to ``F.cross_entropy(model(idx), targets)``, but computed by the
        fused ``F.linear_cross_entropy``, which never holds the (B, T, V)
        logits: for GPT-2 at 1,024 tokens that saves three arrays of 206 MB
        and a pass of ``exp`` (docs/performance.md, "Where the memory goes").
        With a ``compute_dtype`` (mixed precision) the head runs unfused, as
        ``lm_head`` then ``F.cross_entropy``: the fused op forms the logits'
        gradient before the loss scale is known, and float16 would flush it
        to zero.
        """
        hidden = self.trunk(idx, attention_mask=attention_mask, validate=validate)
        if self.compute_dtype is not None:
            return F.cross_entropy(self.lm_head(hidden), targets, ignore_index=ignore_index)
        return F.linear_cross_entropy(hidden, self.wte.weight, targets, ignore_index=ignore_index)

    def set_compute_dtype(self, dtype: Any) -> "GPT":
        """Run every matrix product in ``dtype`` (``"float16"``: mixed precision; ``None``: float32).

        The weights stay float32 (the optimizer's master copy); each product
        casts its operands (``F.linear``, attention), and layer norm, softmax,
        GELU, the loss and the residual stream stay float32, where float16
        would lose too much (docs/training.md, "Mixed precision").
        """
        dtype = None if dtype is None or np.dtype(dtype) == np.float32 else np.dtype(dtype)
        for _, module in self.named_modules():
            if hasattr(module, "compute_dtype"):
                module.compute_dtype = dtype
        return self

    def forward(self, idx: Any, *, attention_mask: Any = None, position_ids: Any = None, inputs_embeds: Any = None,
                cache: KVCache | None = None, validate: bool = True) -> Tensor:
        """Logits of the next token at every position: ``lm_head(trunk(idx))``, a (B, T, vocab_size) Tensor.

        ``idx``: int (B, T) (a 1-D sequence is refused rather than guessed at:
        pass ``ids[None]``). The keyword arguments are those of ``trunk``.
        For the loss, ``F.cross_entropy(model(x), y)``; for attention maps,
        ``model.trunk(x, return_attention=True)``.
        """
        return self.lm_head(self.trunk(idx, attention_mask=attention_mask, position_ids=position_ids,
                                       inputs_embeds=inputs_embeds, cache=cache, validate=validate))

    # ----------------------------------------------- generation, checkpoints
    def generate(self, idx: Any, max_new_tokens: int | None = None, *, attention_mask: Any = None,
                 max_length: int | None = None, min_new_tokens: int = 0, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, seed: int | Sequence[int] | None = None,
                 use_cache: bool = True) -> Array:
        """Continue ``idx`` (int (B, T), left-padded as ``attention_mask`` says): returns int (B, T + n).

        Greedy unless ``do_sample``; see ``npgpt.generation.generate`` for the details.
        """
        return generation.generate(self, idx, max_new_tokens, attention_mask=attention_mask, max_length=max_length,
                                   min_new_tokens=min_new_tokens, do_sample=do_sample, temperature=temperature,
                                   top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed,
                                   use_cache=use_cache)

    def hf_tensors(self) -> dict[str, np.ndarray]:
        """The weights under GPT-2's Hugging Face names (``transformer.h.0...``), float32 NumPy arrays."""
        return {HF_PREFIX + name: np.ascontiguousarray(backend.to_numpy(p.data).astype(np.float32, copy=False))
                for name, p in self.named_parameters()}

    def load_hf_tensors(self, tensors: dict[str, np.ndarray], source: Any = "the checkpoint") -> "GPT":
        """Take weights named as in a Hugging Face GPT-2 file; every name and shape is checked first.

        Accepts names with or without the ``transformer.`` prefix, and an
        ``lm_head.weight`` only when it equals ``wte`` (GPT-2 ties them; npgpt
        has no untied head). Errors (``CheckpointError``) name ``source`` and
        the tensor. The arrays are taken over, not copied.
        """
        loaded = {name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name: array
                  for name, array in tensors.items()}
        self.check_hf_shapes(self.config, {name: array.shape for name, array in loaded.items()}, source)
        head = loaded.pop("lm_head.weight", None)
        if head is not None and not np.array_equal(head, loaded["wte.weight"]):
            raise checkpoint.CheckpointError(f"{source}: lm_head.weight differs from wte.weight; npgpt's LM head is "
                                             "tied to the token embedding (as GPT-2's is) and cannot hold a "
                                             "separate head")
        for name, p in self.named_parameters():
            p.data = backend.to_device(loaded[name], p.device)
        return self

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> Any:
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's GPT-2 layout (and the tokenizer's
        files, if given, as one version with them).

        Complete or refused (``npgpt.io.checkpoint.write_checkpoint``): a kill or a full disk leaves
        the previous version or a directory that is refused, never a mixture. Other files already
        in ``directory`` (a run's ``checkpoint/``, the user's) are kept.
        """
        return checkpoint.write_checkpoint(directory, checkpoint.hf_config(self.config), self.hf_tensors(),
                                           write_extra=None if tokenizer is None else tokenizer.save)

    @staticmethod
    def check_hf_shapes(config: GPTConfig, shapes: dict[str, tuple[int, ...]], source: Any = "the checkpoint") -> None:
        """Compare a checkpoint's ``{name: shape}`` (from its header) with what ``config`` implies.

        Run before a model is built, so that a ``config.json`` claiming sizes its
        weights file does not hold (``vocab_size: 10**12``, ``n_layer: 10**6``)
        is a ``CheckpointError`` at once, not a ``MemoryError`` or a long wait.
        Names may carry the ``transformer.`` prefix; ``lm_head.weight`` must
        have ``wte``'s shape.
        """
        names = {name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name: tuple(shape)
                 for name, shape in shapes.items()}
        head = names.pop("lm_head.weight", None)
        needed = 4 + 12 * config.n_layer
        if needed > 2 * len(names) + 16:      # checked first: listing the expected names costs O(n_layer)
            raise checkpoint.CheckpointError(f"{source}: config.json says n_layer={config.n_layer}, which needs "
                                             f"{needed:,} tensors; the file holds {len(names):,}")
        expected = config.tensor_shapes()
        unexpected = sorted(set(names) - set(expected))
        if unexpected:
            more = " ..." if len(unexpected) > 5 else ""
            raise checkpoint.CheckpointError(f"{source}: unexpected tensors {unexpected[:5]}{more} "
                                             "(not part of a GPT-2 model of this config.json)")
        for name, shape in expected.items():
            if name not in names:
                raise checkpoint.CheckpointError(f"{source}: tensor {name!r} is missing")
            if names[name] != shape:
                raise checkpoint.CheckpointError(f"{source}: tensor {name!r} has shape {names[name]}, "
                                                 f"but config.json implies {shape}")
        if head is not None and head != expected["wte.weight"]:
            raise checkpoint.CheckpointError(f"{source}: lm_head.weight has shape {head}, not wte's "
                                             f"{expected['wte.weight']}")

    def crop_block_size(self, block_size: int) -> "GPT":
        """Shorten the context to ``block_size`` positions, in place: the position table keeps its first
        ``block_size`` rows (as nanoGPT does). A position table cannot grow: the model never learned
        the positions it does not have, so a larger ``block_size`` is refused."""
        old = self.config.block_size
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or not 1 <= block_size <= old:
            raise ValueError(f"block_size may only shrink the model's context of {old} positions; got {block_size!r}")
        if block_size < old:
            self.wpe.weight = nn.Parameter(self.wpe.weight.data[:block_size].copy())     # (block_size, C)
            self.wpe.num_embeddings = int(block_size)
            self.config.block_size = int(block_size)
        return self

    def set_dropout(self, p: float) -> "GPT":
        """Set every dropout probability (embedding, attention, residual) to ``p``, and ``config.dropout``."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {p!r}")
        for _, module in self.named_modules():
            if isinstance(module, nn.Dropout):
                module.p = float(p)
        self.config.dropout = float(p)
        return self

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, revision: str | None = None,
                        allow_non_finite: bool = False) -> "GPT":
        """Load a GPT-2 checkpoint directory, a model shipped in ``npgpt/io/pretrained/``, or a Hub repo.

        Tried in that order (``npgpt.io.checkpoint.resolve``): a name such as ``"gpt2"`` or
        ``"org/name"`` that is neither a directory nor a shipped model is downloaded from the
        Hugging Face Hub into its cache, or read from there (needs ``pip install -e ".[hub]"``;
        ``revision``, a branch, tag or commit, picks the version). Only safetensors are read,
        in one file or sharded (docs/model.md, "Loading GPT-2 from the Hub").

        The weights are float32, on the CPU; the model is returned in eval
        mode. Its ``config.dropout`` is the checkpoint's ``resid_pdrop`` (0.1
        for OpenAI's GPT-2), used only if it is switched to training mode.
        Every file is checked before the model is built (docs/model.md,
        "What the loader guarantees"): errors are ``CheckpointError``s naming
        the file and tensor. Weights holding NaN or infinity are refused
        unless ``allow_non_finite``.
        """
        directory = checkpoint.resolve(name_or_dir, revision)
        config = GPTConfig.from_pretrained(directory)
        path = checkpoint.weights_path(directory)          # model.safetensors, or a sharded checkpoint's index
        cls.check_hf_shapes(config, checkpoint.weight_shapes(path), path)
        model = cls(config, init=False)
        tensors = checkpoint.read_weights(path, allow_non_finite=allow_non_finite)
        return model.load_hf_tensors(tensors, path).eval()
