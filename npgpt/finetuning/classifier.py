"""``GPTClassifier``: a GPT backbone and a linear head on the last real token.

Companion of ``docs/finetuning.md``.

For a batch of token ids ``idx`` (B, T) and an attention mask ``m`` (B, T),
1 for real tokens and 0 for padding (the Hugging Face convention):

1. The backbone runs with the mask: no real token attends to a padding
   token, and the position of a real token is the number of real tokens
   before it (docs/finetuning.md eq:padded-positions), so left padding shifts no position.
2. **Pooling** (eq:last-token-pooling): a causal model's hidden state at the last real
   token ``t_b`` is the only one that has read the whole text, so it is the
   text's summary: ``h_b = H[b, t_b]``, ``t_b = max{t : m[b, t] = 1}``.
   It is found from the mask, never by searching for a pad token id: GPT-2
   has no pad token, so people pad with ``<|endoftext|>`` -- which may also
   occur inside a text, where a search for it would stop too early.
3. **Head** (eq:classifier-head): ``z_b = h_b W`` with ``W`` (n_embd, num_labels).

``pooling="concat"`` (ULMFiT's concat pooling, eq:concat-pooling) gives the head more
than the last state: ``[h_b, mean_t H[b, t], max_t H[b, t]]`` over the real
tokens only, so ``W`` is (3 n_embd, num_labels); ``pooling="mean"`` gives
the mean alone. Dropout on the pooled vector (``head_dropout``, off unless
fine-tuning sets it) regularises the new head. Only ``"last"`` is what
Hugging Face's ``GPT2ForSequenceClassification`` computes.

**The auxiliary language-modelling objective** (``lm_loss_weight`` = lambda, 0
unless fine-tuning sets it; eq:auxiliary-lm-loss): GPT-1 fine-tuned with
``L = L_task + lambda L_LM``, ``L_LM`` the backbone's own next-token
cross-entropy over the same texts (real tokens predicting real tokens only),
so the backbone keeps modelling the task's language while it learns the
labels. It costs the tied head's product over every real token.

Consequently a sequence's logits are the same alone as in a padded batch,
padded on either side, with any pad id (up to float rounding).

``num_labels = 1`` is the binary case of the chapter: one logit, the sigmoid
``s(z)`` (eq:sigmoid) is the probability of class 1, the loss is binary
cross-entropy (eq:bce). ``num_labels > 1`` uses softmax cross-entropy (eq:multiclass-loss).

Checkpoints use Hugging Face's ``GPT2ForSequenceClassification`` layout:
backbone tensors prefixed ``transformer.``, the head ``score.weight`` stored
(num_labels, n_embd) as ``torch.nn.Linear`` keeps it (so it is transposed on
save and load), and ``config.json`` with ``architectures``, ``num_labels``,
``id2label`` and ``label2id``.
"""

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

import npgpt.functional as F
from npgpt import backend, nn
from npgpt.autograd import Tensor, no_grad
from npgpt.autograd.core import _make
from npgpt.finetuning.labelled import next_token_targets
from npgpt.io import checkpoint, hf_gpt2, inputs
from npgpt.model import GPT, GPTConfig
from npgpt.nn import child_seeds

ARCHITECTURE = "GPT2ForSequenceClassification"

Array = Any  # a numpy.ndarray or a cupy.ndarray


POOLINGS = ("last", "mean", "concat")


def last_token_index(mask: Array) -> Array:
    """Index of the last real token of each row (eq:last-token-pooling): ``max{t : m[b, t] = 1}``, (B,)."""
    xp = backend.array_module(mask)
    T = mask.shape[1]
    # t * m[b, t] is largest at the last t with m = 1 (every row has one: checked before).
    return (mask * xp.arange(T)).argmax(axis=1)


def pooled_width(pooling: str, n_embd: int) -> int:
    """Width of the pooled vector the head reads: ``n_embd``, or ``3 n_embd`` for concat pooling."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return 3 * n_embd if pooling == "concat" else n_embd


def masked_pool(hidden: Tensor, mask: Array | None, pooling: str = "last") -> Tensor:
    """A summary of each sequence's real tokens: (B, T, C) -> (B, C), or (B, 3C) for concat pooling.

    docs/finetuning.md eq:last-token-pooling and eq:concat-pooling.

    With ``m`` the mask (1 = real token), ``n_b = sum_t m[b, t]`` and ``t_b`` the last real token:

    * ``"last"``: ``H[b, t_b]`` (eq:last-token-pooling);
    * ``"mean"``: ``u_b = sum_t m[b, t] H[b, t] / n_b``;
    * ``"concat"``: ``[H[b, t_b], u_b, v_b]`` with ``v_b[c] = max_{t: m[b, t] = 1} H[b, t, c]`` (eq:concat-pooling).

    Padding never enters: it is outside the sums, and the max is taken over
    real tokens only. ``mask=None`` means every token is real.

    Gradient, given ``g = [g_last, g_mean, g_max]``: ``g_last`` goes to
    ``H[b, t_b]``; ``m[b, t] g_mean / n_b`` to every ``H[b, t]``; ``g_max[b, c]``
    to the position where the max was reached (the first one on a tie, a
    subgradient as for any max).
    """
    width = pooled_width(pooling, hidden.shape[-1])     # checks the name
    xp = backend.array_module(hidden.data)
    H = hidden.data
    B, T, C = H.shape
    rows = xp.arange(B)
    if mask is None:
        m = xp.ones((B, T), dtype=H.dtype)
        last = xp.full((B,), T - 1, dtype=xp.int64)
    else:
        m = mask.astype(H.dtype)
        last = last_token_index(mask)
    parts = [] if pooling == "mean" else [H[rows, last]]                         # (B, C)
    count = m.sum(axis=1)[:, None]                                               # (B, 1)
    if pooling != "last":
        parts.append(xp.einsum("bt,btc->bc", m, H) / count)                      # (B, C)
    if pooling == "concat":
        where = xp.argmax(xp.where(m[:, :, None] > 0, H, -xp.inf), axis=1)       # (B, C): t of each max
        parts.append(xp.take_along_axis(H, where[:, None, :], axis=1)[:, 0])     # (B, C)
    out = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)         # (B, width)

    def backward(g: Array) -> tuple[Array]:
        pieces = xp.split(g, width // C, axis=1)
        if pooling == "last":
            dH = xp.zeros_like(H)
        else:
            g_mean = pieces[0] if pooling == "mean" else pieces[1]
            dH = m[:, :, None] * (g_mean / count)[:, None, :]
        if pooling != "mean":
            dH[rows, last] += pieces[0]             # one (b, t_b) per row: no index repeats
        if pooling == "concat":
            dH[rows[:, None], where, xp.arange(C)[None, :]] += pieces[2]   # one (b, t, c) per (b, c)
        return (dH,)

    return _make(out, (hidden,), backward)


def language_model_loss(gpt: GPT, hidden: Tensor, idx: Array, mask: Array | None,
                        pairs_per_row: float | None = None) -> Tensor:
    """The backbone's next-token cross-entropy over a padded batch's real tokens (eq:auxiliary-lm-loss).

    ``hidden`` (B, T, C) is the trunk's output for ``idx`` (B, T); the tied head
    and the loss are one fused op (``F.linear_cross_entropy``), and only a real
    token that predicts a real token counts (:func:`next_token_targets`): the
    mean over those ``t`` pairs. When the rows are a slice of a larger batch
    whose gradient is the sum of its slices' weighted by their share of rows
    (threads, ranks: docs/performance.md eq:shard-gradients), ``pairs_per_row``
    is that whole batch's pairs per row, ``P / N``: the slice then returns
    ``(sum of its pair losses) / (B P / N)``, so that its share ``B / N`` of it
    is its pairs' part of the whole batch's mean over ``P`` pairs, however the
    rows were split. A slice with no pair (one-token texts) adds nothing.
    """
    targets = next_token_targets(idx, mask)
    pairs = int((targets != -100).sum())
    if pairs == 0:
        return (hidden * 0.0).sum()         # nothing to predict: a zero that still belongs to the graph
    mean = F.linear_cross_entropy(hidden, gpt.head_weight, targets)
    if pairs_per_row is None:
        return mean
    return mean * (pairs / (idx.shape[0] * pairs_per_row))


@dataclasses.dataclass(frozen=True)
class Classification:
    """One text's class: its ``label``, that label's probability ``score``, and every class's."""

    label: str
    score: float
    probabilities: dict[str, float]


class GPTClassifier(nn.Module):
    """A GPT-2 sequence classifier: ``classifier(idx, attention_mask=mask)`` -> logits (B, num_labels).

    ``config``: the backbone's ``GPTConfig``. ``num_labels``: 1 for a
    sigmoid/binary head, ``k > 1`` for a k-way softmax head. ``labels``:
    optional class names (``labels[i]`` is class ``i``; for ``num_labels=1``
    give the two names of classes 0 and 1). ``pad_token_id`` is only what the
    batching helpers pad with and what is written to ``config.json`` for
    Hugging Face; the classifier itself never looks for it. ``pooling``:
    what the head reads (:func:`masked_pool`): ``"last"`` (the last real
    token's state, Hugging Face's choice), ``"mean"``, or ``"concat"`` (last,
    mean and max; ULMFiT). ``head_dropout`` (an ``nn.Dropout``, ``p = 0``
    until fine-tuning sets it) acts on the pooled vector in training mode.
    """

    def __init__(self, config: GPTConfig | None = None, num_labels: int = 1, labels: Sequence[str] | None = None,
                 pad_token_id: int | None = None, seed: int = 0, backbone: GPT | None = None,
                 pooling: str = "last"):
        super().__init__()
        width_of = pooled_width(pooling, 1)     # checks the name before anything is built
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer (1 for a sigmoid head), got {num_labels!r}")
        num_labels = int(num_labels)
        classes = 2 if num_labels == 1 else num_labels
        if labels is None:
            labels = [str(i) for i in range(classes)]
        labels = [str(n) for n in labels]
        if len(labels) != classes:
            raise ValueError(f"{len(labels)} label names for {classes} classes (num_labels={num_labels}); "
                             f"a one-logit head has two classes, 0 and 1")
        if len(set(labels)) != len(labels):
            raise ValueError(f"label names must be distinct, got {labels}")
        if backbone is None:
            backbone = GPT(config if config is not None else GPTConfig(), seed=seed)
        elif not isinstance(backbone, GPT):
            raise TypeError(f"backbone must be a GPT, got {type(backbone).__name__}")
        self.config = backbone.config
        self.num_labels = num_labels
        self.labels = labels
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.transformer = backbone
        self.pooling = pooling
        # Seeds: child 0 of ``seed`` is the backbone's dropout, 1 the head's weights, 2 the head's dropout.
        self.head_dropout = nn.Dropout(0.0, seed=child_seeds(seed, 3)[2])
        # A small random head (Normal(0, 0.02) as GPT-2 initialises linears) on the
        # backbone's device: its first logits are near 0, i.e. p ~ 1/2 for every class.
        # Its seed is child 1 of ``seed`` (child 0 seeds the backbone's dropout; see child_seeds).
        self.score = nn.Linear(width_of * self.config.n_embd, num_labels, bias=False, std=0.02,
                               rng=np.random.default_rng(child_seeds(seed, 2)[1]))
        self.score.to(backbone.device)
        self.lm_loss_weight = 0.0       # lambda of eq:auxiliary-lm-loss; fine-tuning sets it
        self.lm_pairs_per_row: float | None = None    # the whole batch's, when fine-tuning shards it

    @property
    def num_classes(self) -> int:
        """How many classes the head separates: 2 for a one-logit head."""
        return 2 if self.num_labels == 1 else self.num_labels

    # ---------------------------------------------------------- forward
    def forward(self, idx: Any, attention_mask: Any = None, labels: Any = None,
                inputs_embeds: Any = None) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_labels); ``(logits, loss)`` when ``labels`` (int (B,)) are given.

        ``idx``: int (B, T) token ids. ``attention_mask``: (B, T), 1 = real
        token, 0 = padding; ``None`` means no padding. ``inputs_embeds``
        (B, T, C) replaces the token-embedding lookup (the positions are still
        added), which is how ``npgpt.viz.saliency`` takes gradients with
        respect to the embeddings. The inputs are checked once, here
        (``inputs.gpt_inputs``), and the backbone's trunk trusts them.
        """
        gpt = self.transformer
        idx, mask, _, inputs_embeds = inputs.gpt_inputs(gpt, idx, attention_mask=attention_mask,
                                                        inputs_embeds=inputs_embeds)
        # No padding: plain positions 0..T-1. Else a real token's position counts the real tokens before it.
        positions = None if mask is None else inputs.positions_from_mask(mask)              # (B, T)
        hidden = gpt.trunk(idx, attention_mask=mask, position_ids=positions, inputs_embeds=inputs_embeds)  # (B, T, C)
        pooled = masked_pool(hidden, mask, self.pooling)       # (B, C), or (B, 3C) for concat pooling
        pooled = self.head_dropout(pooled)                     # identity unless training with p > 0
        logits = self.score(pooled)                            # (B, num_labels)
        if labels is None:
            return logits
        loss = self.loss(logits, labels)
        if self.lm_loss_weight and inputs_embeds is None:     # eq:auxiliary-lm-loss
            loss = loss + self.lm_loss_weight * language_model_loss(gpt, hidden, idx, mask, self.lm_pairs_per_row)
        return logits, loss

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        """Mean loss of class labels ``labels`` (int (B,)) given ``logits`` (B, num_labels).

        One logit: binary cross-entropy of ``s(z)`` against ``y`` in {0, 1}
        (eq:bce). Several: softmax cross-entropy (eq:multiclass-loss).
        """
        y = inputs.as_array(labels)      # checked where it is: host labels need no copy back from a GPU
        if y.dtype.kind not in "iu":
            raise TypeError(f"class labels must be integers, got dtype {y.dtype}")
        y = y.reshape(-1)
        if y.shape[0] != logits.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for a batch of {logits.shape[0]} logits")
        low, high = inputs.min_max(y) if y.size else (0, 0)
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}, got {low}..{high}")
        if self.num_labels == 1:
            return F.binary_cross_entropy_with_logits(logits, y.reshape(-1, 1).astype(logits.dtype))
        return F.cross_entropy(logits, y)

    def predict_proba(self, idx: Any, attention_mask: Any = None) -> np.ndarray:
        """Class probabilities (B, num_classes) as a NumPy array, without a graph.

        For one logit, column 1 is ``s(z)`` and column 0 is ``1 - s(z)``.
        """
        with no_grad():
            logits = self(idx, attention_mask=attention_mask)
            if self.num_labels == 1:
                p1 = F.sigmoid(logits).numpy()[:, 0].astype(np.float64)
                return np.stack([1.0 - p1, p1], axis=1)
            return F.softmax(logits, axis=-1).numpy().astype(np.float64)

    def predict(self, idx: Any, attention_mask: Any = None) -> np.ndarray:
        """The most probable class of each sequence of token ids, int64 (B,). For texts: :meth:`classify`."""
        return self.predict_proba(idx, attention_mask).argmax(axis=1)

    def classify(self, texts: str | Sequence[str], tokenizer: Any, batch_size: int = 64,
                 max_length: int = 128) -> list[Classification]:
        """The class of each text, with its probabilities: what ``npgpt classify`` prints.

        ``texts``: one string or a list. Each text is encoded by ``tokenizer``
        (the one saved beside the classifier), cut to its first ``max_length``
        tokens as fine-tuning cut it (``FinetuneConfig.max_length``), and run
        in padded batches of ``batch_size``. ``predict`` and ``predict_proba``
        take token ids instead.
        """
        from npgpt.finetuning.finetune import text_probabilities  # the fine-tuning side encodes and pads

        if isinstance(texts, str):
            texts = [texts]
        probs = text_probabilities(self, tokenizer, texts, batch_size=batch_size, max_length=max_length)
        return [Classification(self.labels[int(row.argmax())], float(row.max()),
                               {name: float(p) for name, p in zip(self.labels, row)}) for row in probs]

    # -------------------------------------------------------- checkpoints
    def hf_config(self) -> dict:
        """The ``config.json`` dict: GPT-2's keys plus the classification ones HF reads."""
        cfg = checkpoint.hf_config(self.config)
        id2label = {str(i): name for i, name in enumerate(self.labels)}
        cfg.update({
            "architectures": [ARCHITECTURE],
            "num_labels": self.num_labels,
            # HF keeps one name per logit; a one-logit head has one logit but two class
            # names, so the names live in npgpt_labels and HF sees "0" -> names[1].
            "id2label": id2label if self.num_labels > 1 else {"0": self.labels[1]},
            "label2id": ({name: i for i, name in enumerate(self.labels)} if self.num_labels > 1
                         else {self.labels[1]: 0}),
            "npgpt_labels": list(self.labels),
            # Tell HF which loss we train with: with one logit, HF would otherwise
            # assume regression (MSE); "multi_label_classification" is its BCE-with-logits.
            "problem_type": ("multi_label_classification" if self.num_labels == 1
                             else "single_label_classification"),
            "pad_token_id": self.pad_token_id,
            # What the head reads; Hugging Face knows only "last" (concat's head is 3 n_embd wide).
            "npgpt_pooling": self.pooling,
        })
        return cfg

    def hf_state_dict(self) -> dict[str, np.ndarray]:
        """``{name: float32 NumPy array}`` in ``GPT2ForSequenceClassification``'s names and layouts.

        Our parameter names already are HF's (``transformer.h.0...``); only the
        head differs in layout: npgpt keeps ``W`` (n_embd, num_labels) for ``h W``,
        torch's ``nn.Linear`` keeps (num_labels, n_embd) for ``h W^T``.
        """
        state = {}
        for name, p in self.named_parameters():
            array = backend.to_numpy(p.data).astype(np.float32, copy=False)
            state[name] = np.ascontiguousarray(array.T if name == "score.weight" else array)
        return state

    def save_pretrained(self, directory: str | pathlib.Path, tokenizer: Any = None) -> pathlib.Path:
        """Write ``config.json`` + ``model.safetensors`` (and the tokenizer's files, if given).

        Complete or refused (``npgpt.io.checkpoint.write_checkpoint``): a kill or a full disk
        leaves the previous version or a directory that is refused, never a mixture; files
        other than these in ``directory`` are left alone.
        """
        directory = pathlib.Path(directory)
        checkpoint.write_checkpoint(directory, self.hf_config(), self.hf_state_dict(),
                                    write_extra=None if tokenizer is None else tokenizer.save)
        return directory

    @classmethod
    def from_pretrained(cls, name_or_dir: str | pathlib.Path, num_labels: int | None = None,
                        labels: Sequence[str] | None = None, pad_token_id: int | None = None,
                        seed: int = 0, *, revision: str | None = None,
                        allow_non_finite: bool = False, pooling: str | None = None) -> "GPTClassifier":
        """A classifier from a saved classifier directory or a pretrained language model.

        ``name_or_dir`` is looked up as ``GPT.from_pretrained`` does: a local directory, a
        shipped model, then a Hugging Face Hub repo id (``revision`` picks its version).

        * A classifier directory (``config.json`` naming ``GPT2ForSequenceClassification``)
          is loaded whole; ``num_labels`` and ``pooling``, if given, must agree with it.
        * A language model (a directory, or a shipped name such as
          ``"npgpt-small"``) becomes the backbone, and a new head with
          ``num_labels`` outputs is initialised (``num_labels`` is required)
          that reads ``pooling`` (default ``"last"``).

        ``config.json`` goes through the same guarded reader as a language
        model's, and every classification field is type-checked; sizes are
        compared with the weights file's header before anything is built.
        Errors are ``CheckpointError``s naming the file (docs/model.md).
        """
        directory = checkpoint.resolve(name_or_dir, revision)
        config_path = directory / checkpoint.CONFIG_NAME
        if not config_path.is_file() and num_labels is None:      # e.g. a save killed before its last rename
            raise FileNotFoundError(f"{config_path} is missing: {name_or_dir} holds no complete model or "
                                    "classifier (a checkpoint needs config.json and model.safetensors)")
        saved = checkpoint.read_raw_config(directory) if config_path.is_file() else {}
        head = _classifier_fields(saved, config_path)
        if head is not None:
            saved_labels, names, id2label, saved_pad, saved_pooling = head
            if num_labels is not None and int(num_labels) != saved_labels:
                raise ValueError(f"{name_or_dir} holds a classifier with num_labels={saved_labels}, "
                                 f"not {num_labels}; load it without num_labels, or start from its backbone")
            if pooling is not None and pooling != saved_pooling:
                raise ValueError(f"{name_or_dir} holds a classifier with pooling={saved_pooling!r}, not "
                                 f"{pooling!r}; load it without pooling, or start from its backbone")
            weights = checkpoint.weights_path(directory)     # model.safetensors, or a sharded checkpoint's index
            config = GPTConfig.from_pretrained(directory)
            shapes = checkpoint.weight_shapes(weights)
            _check_head_shape(shapes.pop("score.weight", None), (saved_labels, pooled_width(saved_pooling, config.n_embd)),
                              weights, config_path)
            hf_gpt2.check_hf_shapes(config, shapes, weights)      # before anything is allocated
            if names is None:
                names = _names_from_id2label(id2label, saved_labels, config_path)
            tensors = checkpoint.read_weights(weights, allow_non_finite=allow_non_finite)
            score = tensors.pop("score.weight")
            backbone = GPT(config, init=False)     # weights come next
            hf_gpt2.load_hf_tensors(backbone, tensors, weights)
            model = cls(num_labels=saved_labels, labels=labels or names, backbone=backbone, seed=seed,
                        pad_token_id=pad_token_id if pad_token_id is not None else saved_pad, pooling=saved_pooling)
            model.score.load_state_dict({"weight": score.T})
            return model.eval()
        if num_labels is None:
            raise ValueError(f"{name_or_dir} is a language model, not a classifier: say how many outputs "
                             "the new head has, e.g. num_labels=1 (sigmoid) or num_labels=3 (softmax)")
        backbone = GPT.from_pretrained(directory, allow_non_finite=allow_non_finite)
        return cls(num_labels=num_labels, labels=labels, backbone=backbone, seed=seed, pad_token_id=pad_token_id,
                   pooling=pooling or "last").eval()


def _check_head_shape(shape: tuple[int, ...] | None, expected: tuple[int, int], weights: pathlib.Path,
                      config_path: pathlib.Path) -> None:
    """The head's stored shape (``None``: absent) against the (num_labels, pooled width) that ``config.json`` implies."""
    if shape is None:
        raise checkpoint.CheckpointError(f"{weights} has no score.weight (the classification head)")
    if tuple(shape) != expected:
        raise checkpoint.CheckpointError(f"{weights}: score.weight has shape {tuple(shape)}, but "
                                         f"{config_path} implies {expected}")


def _classifier_fields(saved: dict, path: pathlib.Path) -> tuple[int, list[str] | None, dict, int | None, str] | None:
    """``(num_labels, npgpt_labels, id2label, pad_token_id, pooling)`` of a classifier's ``config.json``; None for
    a language model.

    Every field is type-checked (no value is stringified or guessed), so a
    malformed file is a ``CheckpointError`` naming it.
    """
    def fail(message: str) -> None:
        raise checkpoint.CheckpointError(f"{path}: {message}")

    architectures = saved.get("architectures") or []
    if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        fail(f"architectures must be a list of strings, got {architectures!r:.80}")
    if ARCHITECTURE not in architectures:
        return None
    id2label = saved.get("id2label") or {}
    if not (isinstance(id2label, dict) and all(isinstance(v, str) for v in id2label.values())):
        fail(f"id2label must map indices to label names (strings), got {id2label!r:.80}")
    if saved.get("num_labels") is not None:
        num_labels = checkpoint.config_int(saved, "num_labels", path)
    else:
        num_labels = len(id2label) or 2
    names = saved.get("npgpt_labels")
    classes = 2 if num_labels == 1 else num_labels
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            fail(f"npgpt_labels must be a list of strings, got {names!r:.80}")
        if len(names) != classes or len(set(names)) != len(names):
            fail(f"npgpt_labels must name {classes} distinct classes (num_labels={num_labels}), got {names!r:.80}")
    pad = saved.get("pad_token_id")
    if pad is not None:
        pad = checkpoint.config_int(saved, "pad_token_id", path, low=0)
    pooling = saved.get("npgpt_pooling", "last")        # absent: a file of Hugging Face or of npgpt before pooling
    if pooling not in POOLINGS:
        fail(f"npgpt_pooling must be one of {', '.join(POOLINGS)}, got {pooling!r:.80}")
    return num_labels, names, id2label, pad, pooling


def _names_from_id2label(id2label: dict, num_labels: int, path: pathlib.Path) -> list[str] | None:
    """Class names from Hugging Face's ``id2label`` (logit index -> name); None for a one-logit head.

    Called once ``num_labels`` has been checked against the head's shape, so the list is as long as the file allows.
    """
    if num_labels == 1:
        return None
    names = [id2label.get(str(i), str(i)) for i in range(num_labels)]
    if len(set(names)) != len(names):
        raise checkpoint.CheckpointError(f"{path}: id2label gives two classes the same name: {names!r:.80}")
    return names
