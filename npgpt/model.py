"""GPT-2: token and position embeddings, a stack of pre-LN Transformer blocks, a tied LM head.

Companion of ``docs/model.md``.

The architecture is exactly OpenAI's GPT-2, with Hugging Face's parameter names
(``wte.weight``, ``h.0.attn.c_attn.weight``, ...), so a GPT-2 checkpoint maps
onto it name for name (``npgpt.checkpoint``). Linear weights are stored
(in, out), GPT-2's own "Conv1D" layout, so none has to be transposed.

One forward pass serves training and generation: with a ``KVCache`` the keys
and values of earlier positions are read from preallocated arrays instead of
being recomputed (docs/model.md eq. 10), so each generated token costs O(T)
attention work instead of O(T^2).
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

import npgpt.functional as F
from npgpt import backend, generation, nn
from npgpt.autograd import Tensor, is_grad_enabled


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

    def __post_init__(self):
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

    def num_parameters(self):
        """Parameter count from the shapes alone (docs/model.md eq. 11):

        ``V C + P C + L (12 C^2 + 13 C) + 2 C``, the LM head tied to ``wte``.
        """
        V, P, L, C = self.vocab_size, self.block_size, self.n_layer, self.n_embd
        return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C

    def to_dict(self):
        return asdict(self)


class KVCache:
    """Keys and values of the positions seen so far, per layer, preallocated.

    ``keys[i]`` and ``values[i]`` are (B, H, capacity, D) arrays; positions
    ``0 .. length-1`` are filled. Writing a new token's key is one slice
    assignment, never a concatenation, so a generation of N tokens copies
    O(N) and not O(N^2) numbers. No gradient flows through a cache: use it
    under ``no_grad()``.
    """

    def __init__(self, config, batch_size, xp=np, dtype=np.float32, capacity=None):
        H, D = config.n_head, config.n_embd // config.n_head
        self.capacity = int(capacity or config.block_size)
        shape = (int(batch_size), H, self.capacity, D)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.batch_size = int(batch_size)
        self.length = 0

    def update(self, layer, k, v):
        """Store ``k, v`` (B, H, T, D) after the cached positions; return all keys and values so far."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KVCache: {stop} positions do not fit a cache of capacity {self.capacity}")
        self.keys[layer][:, :, start:stop] = k
        self.values[layer][:, :, start:stop] = v
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]   # (B, H, stop, D)

    def reset(self):
        """Forget every position (the arrays are kept and overwritten)."""
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (docs/model.md eqs. 4, 5 and 9)."""

    def __init__(self, config, rng, seed):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = nn.Linear(C, 3 * C, rng=rng)                 # x -> [q | k | v]
        # Residual projections start smaller, so the residual stream's variance
        # does not grow with depth (GPT-2: std 0.02 / sqrt(2 n_layer)).
        self.c_proj = nn.Linear(C, C, std=0.02 / math.sqrt(2 * config.n_layer), rng=rng)
        self.attn_dropout = nn.Dropout(config.dropout, seed=seed)
        self.resid_dropout = nn.Dropout(config.dropout, seed=seed + 1)

    def forward(self, x, layer=0, cache=None, attn_mask=None):
        """``x`` (B, T, C) -> (output (B, T, C), attention probabilities (B, H, T, T_keys)).

        ``attn_mask``: boolean, broadcastable to (B, H, T, T_keys), True = may attend
        (hides padding; see ``GPT.hidden_states``).
        """
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        q, k, v = self.c_attn(x).split(3, axis=2)                      # 3 x (B, T, C)
        # Split the channels into H heads of D: (B, T, C) -> (B, T, H, D) -> (B, H, T, D).
        q, k, v = (t.reshape(B, T, H, D).transpose(0, 2, 1, 3) for t in (q, k, v))
        if cache is not None:
            k_all, v_all = cache.update(layer, k.data, v.data)         # (B, H, T_cached + T, D)
            k, v = Tensor(k_all), Tensor(v_all)
        if self.training and self.attn_dropout.p > 0:
            y, probs = self._attention_with_dropout(q, k, v, attn_mask)
        else:
            y, probs = F.scaled_dot_product_attention(q, k, v, causal=True, attn_mask=attn_mask, return_weights=True)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                   # heads side by side again
        return self.resid_dropout(self.c_proj(y)), probs

    def _attention_with_dropout(self, q, k, v, attn_mask=None):
        """Eqs. 4-5 from elementary ops, with dropout on the probabilities (training only).

        The fused op has no dropout inside; GPT-2 drops attention
        probabilities, so this path spells the formula out.
        """
        xp = backend.array_module(q.data)
        Tq, Tk = q.shape[2], k.shape[2]
        scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[3]))   # (B, H, Tq, Tk)
        hidden = ~xp.tril(xp.ones((Tq, Tk), dtype=bool), k=Tk - Tq)
        if attn_mask is not None:
            hidden = hidden | ~xp.asarray(attn_mask, dtype=bool)
        probs = F.softmax(scores.masked_fill(hidden, float(xp.finfo(scores.dtype).min)))
        return self.attn_dropout(probs) @ v, probs.data


class MLP(nn.Module):
    """Position-wise feed-forward network: ``c_proj(gelu(c_fc(x)))``, 4x wide inside."""

    def __init__(self, config, rng, seed):
        super().__init__()
        C = config.n_embd
        self.c_fc = nn.Linear(C, 4 * C, rng=rng)
        self.c_proj = nn.Linear(4 * C, C, std=0.02 / math.sqrt(2 * config.n_layer), rng=rng)
        self.dropout = nn.Dropout(config.dropout, seed=seed)

    def forward(self, x):                                              # (B, T, C) -> (B, T, C)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LN Transformer block (docs/model.md eq. 9):

    ``x = x + attn(ln_1(x))``, then ``x = x + mlp(ln_2(x))``.
    """

    def __init__(self, config, rng, seed):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, rng, seed)
        self.ln_2 = nn.LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config, rng, seed + 2)

    def forward(self, x, layer=0, cache=None, attn_mask=None):         # (B, T, C) -> (B, T, C)
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

    Weights are initialised as GPT-2's: Normal(0, 0.02), residual projections
    Normal(0, 0.02 / sqrt(2 n_layer)), biases 0, layer-norm gains 1, all drawn
    from ``numpy.random.default_rng(seed)`` (float32, on the CPU; move the
    model with ``.to("cuda")``). ``init=False`` skips the random draw and
    leaves the weights at zero, for a checkpoint to be loaded over them (for
    GPT-2 small that saves drawing 124 million random numbers).
    """

    def __init__(self, config=None, seed=0, *, init=True):
        super().__init__()
        config = config if config is not None else GPTConfig()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        rng = np.random.default_rng(seed) if init else _Zeros()
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C, rng=rng)        # token table, also the LM head
        self.wpe = nn.Embedding(config.block_size, C, rng=rng)        # learned position table
        self.drop = nn.Dropout(config.dropout, seed=seed * 1000 + 1)
        self.h = nn.ModuleList(Block(config, rng, seed=seed * 1000 + 10 * (i + 1)) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, config.layer_norm_epsilon)

    @property
    def device(self):
        """Where the model's weights live (looked up once per forward pass, so kept cheap)."""
        return self.wte.weight.device

    # ------------------------------------------------------------ inputs
    def check_ids(self, idx, past_length=0):
        """Validate token ids: an integer (B, T) array with ids in range and T + past <= block_size."""
        if isinstance(idx, Tensor):
            idx = idx.data
        if not hasattr(idx, "dtype"):
            idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"token ids must be a 2-D (batch, time) array, got shape {tuple(idx.shape)}; "
                             "for one sequence pass ids[None]")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {idx.dtype}")
        if idx.shape[1] == 0:
            raise ValueError("token ids are empty: need at least one position")
        if idx.shape[1] + past_length > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} (+ {past_length} cached positions) exceeds "
                             f"block_size {self.config.block_size}")
        F.check_token_ids(idx, self.config.vocab_size)
        return backend.to_device(idx, self.device)

    def new_cache(self, batch_size):
        """An empty KV cache for ``batch_size`` sequences on the model's device."""
        xp = backend.array_module(self.wte.weight.data)
        return KVCache(self.config, batch_size, xp=xp, dtype=self.wte.weight.dtype)

    # ----------------------------------------------------------- forward
    def forward(self, idx, targets=None, return_attention=False, cache=None):
        """Logits of the next token at every position.

        ``idx``: int (B, T) (a 1-D sequence is refused rather than guessed at:
        pass ``ids[None]``). Returns ``logits`` (B, T, vocab_size) as a Tensor;
        ``(logits, loss)`` when ``targets`` (int (B, T)) are given; and, with
        ``return_attention=True``, additionally a list with one (B, H, T, T_keys)
        array of attention probabilities per layer (last element of the tuple).

        ``cache`` (a ``KVCache``, see ``new_cache``) holds the keys and values of
        earlier positions: ``idx`` then continues the cached sequence, its
        positions start at ``cache.length``, and the cache grows by T.
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
        xp = backend.array_module(self.wte.weight.data)
        positions = xp.arange(past, past + T)
        x = self.drop(self.wte(idx) + self.wpe(positions))             # (B, T, C)
        attentions = []
        for layer, block in enumerate(self.h):
            x, probs = block(x, layer, cache)
            if return_attention:
                attentions.append(probs)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight.T)                        # tied head: x wte^T, (B, T, V)
        out = (logits,)
        if targets is not None:
            out += (F.cross_entropy(logits, targets),)
        if return_attention:
            out += (attentions,)
        return out[0] if len(out) == 1 else out

    def hidden_states(self, idx, attention_mask=None, position_ids=None, inputs_embeds=None,
                      return_attention=False):
        """The final hidden states ``ln_f(x)`` (B, T, C), before the LM head (for classifiers).

        ``attention_mask`` (B, T), 1 = real token, 0 = padding: no position
        attends to a padding position. ``position_ids`` (B, T) int replaces
        ``0..T-1`` (a left-padded sequence counts its positions from its first
        real token). ``inputs_embeds`` (B, T, C) replaces the token-embedding
        lookup ``wte(idx)`` (gradients with respect to the embeddings, for
        saliency). With ``return_attention`` also the per-layer probabilities.
        See docs/finetuning.md (section "Padding").
        """
        idx = self.check_ids(idx)
        B, T = idx.shape
        xp = backend.array_module(self.wte.weight.data)
        positions = xp.arange(T)
        if position_ids is not None:
            positions = backend.to_device(position_ids, self.device)
            if tuple(positions.shape) not in ((B, T), (T,)):
                raise ValueError(f"position_ids of shape {tuple(positions.shape)} do not fit token ids {(B, T)}")
            F.check_token_ids(positions, self.config.block_size, what="position id")
        if inputs_embeds is None:
            tokens = self.wte(idx)                                     # (B, T, C)
        elif tuple(inputs_embeds.shape) != (B, T, self.config.n_embd):
            raise ValueError(f"inputs_embeds of shape {tuple(inputs_embeds.shape)}, expected "
                             f"{(B, T, self.config.n_embd)}")
        else:
            tokens = inputs_embeds
        x = self.drop(tokens + self.wpe(positions))                    # (B, T, C)
        attn_mask = None
        if attention_mask is not None:
            keys = backend.to_device(attention_mask, self.device) != 0     # (B, T)
            attn_mask = keys[:, None, None, :]                         # (B, 1, 1, T): hides padded keys
        attentions = []
        for layer, block in enumerate(self.h):
            x, probs = block(x, layer, attn_mask=attn_mask)
            attentions.append(probs)
        x = self.ln_f(x)
        return (x, attentions) if return_attention else x

    # ----------------------------------------------- generation, checkpoints
    def generate(self, idx, max_new_tokens, *, do_sample=False, temperature=1.0, top_k=None, top_p=None,
                 eos_token_id=None, seed=None, use_cache=True):
        """Continue ``idx`` (int (B, T)): returns int (B, T + n), n <= max_new_tokens.

        Greedy unless ``do_sample``; see ``npgpt.generation.generate`` for the details.
        """
        return generation.generate(self, idx, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                   top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, seed=seed,
                                   use_cache=use_cache)

    def save_pretrained(self, directory):
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's GPT-2 layout."""
        from npgpt import checkpoint     # deferred: checkpoint builds GPT objects

        return checkpoint.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_dir):
        """Load a GPT-2 checkpoint directory, or a model shipped in ``npgpt/pretrained/``."""
        from npgpt import checkpoint

        return checkpoint.load_pretrained(name_or_dir)
