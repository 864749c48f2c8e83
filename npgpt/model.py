"""GPT-2: token and position embeddings, a stack of pre-LN Transformer blocks, a tied LM head.

Companion of ``docs/model.md``, in the chapter's order: the config, attention, the MLP, the block,
the whole GPT (``trunk``, ``lm_head``, ``forward``, ``loss``). The KV cache that attention reads
while decoding is ``npgpt.generation.KVCache``; Hugging Face's names and files, ``npgpt.io.hf_gpt2``.

Exactly OpenAI's GPT-2, with Hugging Face's parameter names (``wte.weight``, ``h.0.attn.c_attn.weight``),
linear weights stored (in, out) as GPT-2's "Conv1D" does. The public entry points (``forward``,
``loss``, ``generate``) check their inputs once (``npgpt.io.inputs``); the layers below them trust them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend, generation, nn
from npgpt.autograd import Tensor, is_grad_enabled
from npgpt.backend import speed
from npgpt.generation import KVCache, panels
from npgpt.io import checkpoint, hf_gpt2, inputs
from npgpt.nn import child_seeds

Array = Any  # a numpy.ndarray or a cupy.ndarray


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
        """Parameter count from the shapes alone (docs/model.md eq:parameter-count):

        ``V C + P C + L (12 C^2 + 13 C) + 2 C``, the LM head tied to ``wte``.
        """
        V, P, L, C = self.vocab_size, self.block_size, self.n_layer, self.n_embd
        return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C

    def to_dict(self) -> dict:
        """The fields as a plain dict (for ``config.json``)."""
        return asdict(self)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike) -> GPTConfig:
        """The config of a GPT-2 checkpoint directory (or shipped model), from its ``config.json``."""
        directory = checkpoint.resolve(name_or_dir)
        try:
            return cls(**checkpoint.read_config(directory))
        except ValueError as exc:
            raise checkpoint.CheckpointError(f"{directory / checkpoint.CONFIG_NAME}: {exc}") from None


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (docs/model.md eq:attention, eq:causal-mask and eq:pre-ln-block)."""

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

        ``attn_mask``: boolean, broadcastable to (B, H, T, T_keys), True = may
        attend (hides padding; see ``GPT.trunk``). With a ``cache`` the keys and
        values of earlier positions come from it (eq:kv-cache). In training mode the
        probabilities are dropped inside the fused attention op (``dropout_p``).
        """
        B, T, C = x.shape
        H = self.n_head
        # Split [q | k | v] and the channels into H heads of D, once: (B, T, 3C) -> (3, B, H, T, D).
        qkv = self.c_attn(x).reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)
        drop = self.attn_dropout
        p = drop.p if drop.training else 0.0
        rng = drop.rng(backend.array_module(x.data)) if p > 0 else None
        if cache is None and attn_mask is None:
            # Training's case: q, k, v stay packed, and their gradients land in one array (F.packed_attention).
            y, probs = F.packed_attention(qkv, dropout_p=p, rng=rng, compute_dtype=self.compute_dtype)
            return self.resid_dropout(self.c_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C))), probs
        q, k, v = qkv[0], qkv[1], qkv[2]                        # (B, H, T, D) each
        if cache is not None:
            k, v = cache.update(layer, k, v)                    # every position so far: (B, H, past + T, D)
        # One query (a decoding step) is the last position: it may see every key, so the
        # causal mask would allow everything and is not built (the same result).
        y, probs = F.scaled_dot_product_attention(q, k, v, causal=T > 1, attn_mask=attn_mask, return_weights=True,
                                                  dropout_p=p, rng=rng, compute_dtype=self.compute_dtype)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)           # heads side by side again
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
    """A pre-LN Transformer block (docs/model.md eq:pre-ln-block):

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




class GPT(nn.Module):
    """GPT-2 language model: the **trunk** (embeddings, blocks, final layer norm -> hidden states
    (B, T, C)) and the **head** (hidden states -> logits, tied to ``wte``), each computed in one place.

    Weights are initialised as GPT-2's: Normal(0, 0.02), residual projections Normal(0, 0.02 /
    sqrt(2 n_layer)), biases 0, layer-norm gains 1, drawn from ``default_rng(seed)`` (float32, CPU;
    move with ``.to("cuda")``); the dropout seeds are children of ``seed``. ``init=False`` leaves
    the weights at zero for a checkpoint to be loaded over them.
    """

    compute_dtype: Any = None

    def __init__(self, config: GPTConfig | None = None, seed: int = 0, *, init: bool = True):
        super().__init__()
        config = config if config is not None else GPTConfig()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        rng = np.random.default_rng(seed) if init else nn.ZeroGenerator()
        C = config.n_embd
        seeds = child_seeds(child_seeds(seed, 1)[0], 1 + config.n_layer)   # embedding dropout, then one per block
        self.wte = nn.Embedding(config.vocab_size, C, rng=rng)        # token table, also the LM head
        self.wpe = nn.Embedding(config.block_size, C, rng=rng)        # learned position table
        self.drop = nn.Dropout(config.dropout, seed=seeds[0])
        self.h = nn.ModuleList(Block(config, rng, seed=seeds[i + 1]) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, config.layer_norm_epsilon)

    @property
    def device(self) -> str:
        """Where the model's weights live (looked up once per forward pass, so kept cheap)."""
        return self.wte.weight.device

    # ------------------------------------------------------- trunk, head
    def trunk(self, idx: Array, *, attention_mask: Array | None = None, position_ids: Array | None = None,
              inputs_embeds: Tensor | None = None, cache: KVCache | None = None,
              return_attention: bool = False) -> Tensor | tuple[Tensor, list[Array]]:
        """The hidden states ``ln_f(x)`` (B, T, C) after the last block: everything but the head.

        ``x_0 = drop(wte[idx] + wpe[positions])``, every block, then the final layer norm (eq:pre-ln-block).
        ``attention_mask`` (B, T_keys): 1 = real token, 0 = padding, never attended to; or an
        ``F.KeyMask`` made by the caller, used as it is (the static decoding step's).
        ``position_ids`` (B, T) replace ``past..past+T-1`` (a left-padded row counts from its first
        real token); ``inputs_embeds`` (B, T, C) replace ``wte[idx]`` (saliency); ``cache`` holds
        the ``past`` earlier positions and grows by T. ``return_attention``: also one (B, H, T,
        T_keys) array of attention probabilities per layer. The trunk trusts its inputs: arrays on
        the model's device, as ``inputs.gpt_inputs`` makes them for ``forward`` and ``loss``.
        """
        T = idx.shape[1]
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = backend.array_module(self.wte.weight.data).arange(past, past + T)
        tokens = self.wte(idx) if inputs_embeds is None else inputs_embeds       # (B, T, C)
        x = self.drop(tokens + self.wpe(position_ids))                          # (B, T, C)
        mask = attention_mask
        if attention_mask is not None and not isinstance(attention_mask, F.KeyMask):
            mask = (attention_mask != 0)[:, None, None, :]                    # (B, 1, 1, T_keys)
        attentions = []
        for layer, block in enumerate(self.h):
            x, probs = block(x, layer, cache, mask)
            if return_attention:
                attentions.append(probs)
        if cache is not None:
            cache.length += T
        hidden = self.ln_f(x)
        return (hidden, attentions) if return_attention else hidden

    @property
    def head_weight(self) -> Tensor:
        """The LM head's weight (V, C): the token table ``wte`` itself (GPT-2 ties them)."""
        return self.wte.table()

    def lm_head(self, hidden: Tensor, decoding: Array | None = None) -> Tensor:
        """Logits ``h wte^T`` (..., vocab_size) from hidden states (..., C): the only place logits are made.

        ``decoding``: one generation's contiguous copy of ``wte^T`` (``decoding_weight``), or
        prompt lookup's copy of it in panels (``npgpt.generation.panels.PanelledWeight``).
        """
        if decoding is not None:
            if isinstance(decoding, panels.PanelledWeight):
                return Tensor(decoding.matmul(hidden.data))
            return Tensor(hidden.data @ decoding)
        w = self.head_weight.data
        if (self.compute_dtype is None and hidden.ndim == 2 and not is_grad_enabled()
                and speed.head_weight_first(w, hidden.shape[0])):
            # A few rows (prompt lookup's verifying pass) without a decoding copy: (wte h^T)^T streams
            # the table once as the product's left operand, where h wte^T repacks it (speed.py).
            xp = backend.array_module(w)
            return Tensor(xp.ascontiguousarray((w @ hidden.data.T).T))
        return F.linear(hidden, self.head_weight.T, compute_dtype=self.compute_dtype)

    def decoding_weight(self, rows: int, steps: int) -> Array | None:
        """``wte^T`` as a contiguous (C, V) copy for the head of one generation, or None where it does not pay
        (with a ``compute_dtype``, or where the speed policy ``npgpt.backend.speed.copy_decoding_head``
        says no: on a GPU, or for fewer rows x steps than the copy costs). Made per generation, dropped with it."""
        w = self.head_weight.data
        if self.compute_dtype is not None or not speed.copy_decoding_head(w, rows, steps):
            return None
        head = backend.array_module(w).empty((w.shape[1], w.shape[0]), dtype=w.dtype)
        for start in range(0, w.shape[0], 256):     # a transpose in bands of rows stays in the cache: ~2.5x faster
            head[:, start:start + 256] = w[start:start + 256].T
        return head

    def forward(self, idx: Any, *, attention_mask: Any = None, position_ids: Any = None, inputs_embeds: Any = None,
                cache: KVCache | None = None) -> Tensor:
        """Logits of the next token at every position: ``lm_head(trunk(idx))``, a (B, T, vocab_size) Tensor.

        ``idx``: int (B, T) (a 1-D sequence is refused rather than guessed at:
        pass ``ids[None]``); the keyword arguments are those of ``trunk``,
        checked and moved to the model's device first (``inputs.gpt_inputs``).
        """
        idx, attention_mask, position_ids, inputs_embeds = inputs.gpt_inputs(
            self, idx, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            cache=cache)
        return self.lm_head(self.trunk(idx, attention_mask=attention_mask, position_ids=position_ids,
                                       inputs_embeds=inputs_embeds, cache=cache))

    def loss(self, idx: Any, targets: Any, *, ignore_index: int = -100, attention_mask: Any = None) -> Tensor:
        """The training loss: mean cross-entropy of ``targets`` under the logits of ``idx``
        (docs/training.md eq:cross-entropy-loss).

        Equal to ``F.cross_entropy(model(idx), targets)``, but the fused ``F.linear_cross_entropy`` takes
        the head's weight and never holds the (B, T, V) logits: for GPT-2 at 1,024 tokens three arrays
        of 206 MB (docs/performance.md). With a ``compute_dtype`` the head runs unfused: the fused op
        forms the logits' gradient before the loss scale is known, and float16 would flush it.
        """
        idx, attention_mask, _, _ = inputs.gpt_inputs(self, idx, attention_mask=attention_mask)
        hidden = self.trunk(idx, attention_mask=attention_mask)
        if self.compute_dtype is not None:
            return F.cross_entropy(self.lm_head(hidden), targets, ignore_index=ignore_index)
        return F.linear_cross_entropy(hidden, self.head_weight, targets, ignore_index=ignore_index)

    # ----------------------------------------------------- the equipment
    def set_compute_dtype(self, dtype: Any) -> GPT:
        """Run every matrix product in ``dtype`` (``"float16"``: mixed precision; ``None``: float32).

        The weights stay float32 (the optimizer's master copy); each product
        casts its operands, and layer norm, softmax, GELU, the loss and the
        residual stream stay float32 (docs/training.md, "Mixed precision").
        """
        dtype = None if dtype is None or np.dtype(dtype) == np.float32 else np.dtype(dtype)
        for _, module in self.named_modules():
            if hasattr(module, "compute_dtype"):
                module.compute_dtype = dtype
        return self

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``capacity`` positions (default
        ``block_size``: GPT-2 small's full cache is 75 MB per row) on the model's device."""
        xp = backend.array_module(self.wte.weight.data)
        return KVCache(self.config, batch_size, xp=xp, dtype=self.wte.weight.dtype, capacity=capacity)

    def generate(self, idx: Any, max_new_tokens: int | None = None, **options: Any) -> Array:
        """Continue ``idx`` (int (B, T), left-padded as ``attention_mask`` says): returns int (B, T + n).

        Greedy unless ``do_sample=True``; the options (``attention_mask``, ``temperature``, ``top_k``,
        ``top_p``, ``eos_token_id``, ``seed`` ...) are those of ``npgpt.generation.generate``.
        """
        return generation.generate(self, idx, max_new_tokens, **options)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> Any:
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's GPT-2 layout (``npgpt.io.hf_gpt2``),
        and the tokenizer's files if given, as one version: complete or refused (``write_checkpoint``)."""
        return checkpoint.write_checkpoint(directory, checkpoint.hf_config(self.config), hf_gpt2.hf_tensors(self),
                                           write_extra=None if tokenizer is None else tokenizer.save)

    def crop_block_size(self, block_size: int) -> GPT:
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

    def set_dropout(self, p: float) -> GPT:
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
                        allow_non_finite: bool = False) -> GPT:
        """Load a GPT-2 checkpoint directory, a model shipped with npgpt, or a Hub repo, every file checked
        first (``npgpt.io.hf_gpt2.load``); float32 weights on the CPU, in eval mode."""
        config, tensors, source = hf_gpt2.load(name_or_dir, GPTConfig, revision=revision,
                                               allow_non_finite=allow_non_finite)
        return hf_gpt2.load_hf_tensors(cls(config, init=False), tensors, source).eval()
