"""Pictures of what a GPT does: attention maps and gradient x input saliency.

Companion of ``docs/interpretability.md``.

Two questions a reader asks of a trained model, and the tool for each:

* *Where does position i look?* -- :func:`attention_map` draws the attention
  probabilities ``P[i, j]`` of one layer and head (docs/interpretability.md
  eq:attention-weights) as a grid: row ``i`` is the query token, column ``j`` the key token.
* *Which input tokens moved this prediction?* -- :func:`saliency` computes,
  for every position ``t``, the gradient of the target's log-probability with
  respect to the token embedding ``e_t``, dotted with ``e_t`` itself
  (gradient x input, eq:saliency), using npgpt's own autograd engine.

Both render without any dependency as SVG (a text format every browser
shows); PNG output uses matplotlib when it is installed (the ``viz`` extra:
``pip install -e ".[viz]"``).
"""

import html
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from npgpt import backend
from npgpt.autograd import Tensor, no_grad
from npgpt.io import inputs

__all__ = ["ATTENTION_COLOUR", "attention_weights", "attention_map", "attention_svg", "draw_attention", "saliency",
           "saliency_svg", "token_labels", "save_figure"]


# ------------------------------------------------------------------ helpers
def _as_id_batch(ids):
    """Token ids as a NumPy int64 array of shape (1, T) (one sequence)."""
    ids = backend.to_numpy(inputs.as_array(ids))
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"expected the token ids of one non-empty sequence, got an array of shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64)[None, :]


def _encode(text_or_ids, tokenizer):
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise ValueError("a text was given but no tokenizer to encode it: pass tokenizer=..., or token ids")
        return _as_id_batch(tokenizer.encode(text_or_ids))
    return _as_id_batch(text_or_ids)


def token_labels(ids: Any, tokenizer: Any = None) -> list[str]:
    """Printable labels for token ids: each id decoded alone, or ``#id`` without a tokenizer.

    Byte-level BPE tokens often start with a space (" cat"); it is shown as
    ``␣`` (U+2423, the glyph every tokenizer figure of the book uses) so that
    labels stay readable and distinct.
    """
    ids = _as_id_batch(ids)[0]
    if tokenizer is None:
        return [f"#{int(i)}" for i in ids]
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        text = text.replace(" ", "\u2423").replace("\n", "\u21b5")
        labels.append(text if text else f"#{int(i)}")
    return labels


# ---------------------------------------------------------------- attention
def attention_weights(model: Any, ids: Any) -> np.ndarray:
    """Attention probabilities of every layer and head for one sequence.

    ``model`` is a ``GPT`` or a ``GPTClassifier`` (its backbone is used).
    Returns a NumPy array of shape (n_layer, n_head, T, T) whose row ``i`` of
    ``[l, h]`` is the distribution of query ``i`` over the keys ``j <= i``
    (eq:attention-weights). Only the trunk runs (``GPT.trunk(..., return_attention=True)``):
    the LM head is not needed.
    """
    gpt = getattr(model, "transformer", model)
    idx = inputs.gpt_ids(gpt, _as_id_batch(ids))    # checked once, here; on the model's device
    was_training = gpt.training
    gpt.eval()                      # no dropout: the picture is of the deterministic model
    try:
        with no_grad():
            _, attentions = gpt.trunk(idx, return_attention=True)   # one (1, H, T, T) per layer
    finally:
        gpt.train(was_training)
    return np.stack([backend.to_numpy(a)[0] for a in attentions])   # (L, H, T, T)


# The colour of full attention in every attention map of the book (SVG and matplotlib alike).
ATTENTION_COLOUR = "#2166ac"


def _colour(value, vmax, rgb=(33, 102, 172)):
    """White (0) to ``rgb`` (vmax), linear in the value."""
    t = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0)
    r, g, b = (round(255 + (c - 255) * t) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _colour_max(w):
    """Top of the colour scale: the largest weight, ignoring a first row that can only be 1."""
    body = w[1:] if w.shape[0] == w.shape[1] and w.shape[0] > 1 else w
    return float(body.max()) if body.size else 1.0


def attention_svg(weights: Any, tokens: Sequence[str], title: str | None = None, cell: int = 22) -> str:
    """An SVG heat map of one attention matrix: ``weights`` (Tq, Tk), ``tokens`` Tk labels.

    Row ``i`` is the query (labels on the left), column ``j`` the key (labels
    on top, rotated). Darker is more attention; each cell's exact value is in
    its tooltip. Cells the causal mask hides (``j > i``) are drawn hatched grey,
    so "no attention allowed" is not confused with "attention close to 0".
    The colour scale ends at the largest weight outside the first query row,
    which is always 1 (the first token can only attend to itself) and would
    otherwise wash out every other row.
    """
    w = backend.to_numpy(inputs.as_array(weights)).astype(np.float64)
    if w.ndim != 2:
        raise ValueError(f"attention_svg needs one (Tq, Tk) matrix, got shape {w.shape}")
    Tq, Tk = w.shape
    tokens = [str(t) for t in tokens]
    if len(tokens) != Tk:
        raise ValueError(f"attention_svg: {len(tokens)} token labels for {Tk} key positions")
    queries = tokens[Tk - Tq:]
    char_w = 7.0                                   # approximate width of one 12px character
    label_w = 12 + char_w * max(len(t) for t in tokens)
    top = 12 + char_w * max(len(t) for t in tokens) * 0.75 + (24 if title else 0)
    width = label_w + Tk * cell + 16
    height = top + Tq * cell + 16
    vmax = _colour_max(w)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">',
           '<defs><pattern id="hidden" width="4" height="4" patternUnits="userSpaceOnUse">'
           '<rect width="4" height="4" fill="#f2f2f2"/><path d="M0,4 L4,0" stroke="#d0d0d0"/></pattern></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    if title:
        out.append(f'<text x="8" y="18" font-size="14">{html.escape(title)}</text>')
    for j, tok in enumerate(tokens):       # key labels, rotated -45 degrees above the columns
        x = label_w + (j + 0.5) * cell
        out.append(f'<text x="{x:.1f}" y="{top - 6:.1f}" transform="rotate(-45 {x:.1f} {top - 6:.1f})">'
                   f'{html.escape(tok)}</text>')
    for i, tok in enumerate(queries):
        y = top + i * cell
        out.append(f'<text x="{label_w - 6:.1f}" y="{y + cell * 0.7:.1f}" text-anchor="end">{html.escape(tok)}</text>')
        for j in range(Tk):
            x = label_w + j * cell
            if j > i + (Tk - Tq):           # the causal mask: this key is in the query's future
                fill, tip = "url(#hidden)", "masked (future token)"
            else:
                fill, tip = _colour(w[i, j], vmax), f"{queries[i]} \u2192 {tokens[j]}: {w[i, j]:.3f}"
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell}" height="{cell}" fill="{fill}" '
                       f'stroke="white"><title>{html.escape(tip)}</title></rect>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def save_figure(svg: str, path: str | pathlib.Path,
                png_draw: Callable[[pathlib.Path], None] | None = None) -> pathlib.Path:
    """Write ``svg`` to ``path`` (``.svg``), or call ``png_draw(path)`` for ``.png``.

    PNG needs matplotlib; without it the error says how to install it.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(svg)
    elif suffix == ".png":
        try:
            import matplotlib
        except ImportError:
            raise ImportError("PNG output needs matplotlib: pip install -e \".[viz]\" "
                              "(or save as .svg, which needs nothing)") from None
        matplotlib.use("Agg")   # no display needed; must precede pyplot's import
        png_draw(path)
    else:
        raise ValueError(f"cannot write {path}: use a .svg or .png file name")
    return path


def draw_attention(ax: Any, weights: Any, tokens: Sequence[str]) -> Any:
    """Draw one attention matrix on a matplotlib ``ax`` in the style of :func:`attention_svg`.

    The book's one style for attention maps: white to ``ATTENTION_COLOUR``, the scale ending at the
    largest weight outside the first row, cells the causal mask hides hatched grey, queries down
    the side and keys along the bottom labelled by :func:`token_labels`. Returns the image (for a
    colour bar).
    """
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.patches import Rectangle

    w = backend.to_numpy(inputs.as_array(weights)).astype(np.float64)
    Tq, Tk = w.shape
    hidden = np.arange(Tk)[None, :] > np.arange(Tq)[:, None] + (Tk - Tq)     # (Tq, Tk): the future
    colours = LinearSegmentedColormap.from_list("attention", ["#ffffff", ATTENTION_COLOUR])
    image = ax.imshow(np.where(hidden, np.nan, w), cmap=colours, vmin=0.0, vmax=_colour_max(w))
    for i, j in zip(*np.nonzero(hidden)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", edgecolor="#d0d0d0",
                               hatch="//", linewidth=0))
    ax.set_xticks(range(Tk), list(tokens), rotation=60, ha="right")
    ax.set_yticks(range(Tq), list(tokens)[Tk - Tq:])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    return image


def attention_map(model: Any, text_or_ids: Any, layer: int = 0, head: int = 0, tokenizer: Any = None,
                  path: str | pathlib.Path | None = None, title: str | None = None) -> str:
    """Render the attention of ``layer`` / ``head`` over one text; return the SVG text.

    ``text_or_ids`` is a string (then ``tokenizer`` is needed) or token ids.
    With ``path`` ending in ``.svg`` the SVG is written there; ``.png``
    draws the same map with matplotlib. Layers and heads count from 0.
    """
    idx = _encode(text_or_ids, tokenizer)
    weights = attention_weights(model, idx)          # (L, H, T, T)
    L, H = weights.shape[:2]
    if not 0 <= layer < L:
        raise ValueError(f"layer {layer} does not exist: the model has layers 0..{L - 1}")
    if not 0 <= head < H:
        raise ValueError(f"head {head} does not exist: each layer has heads 0..{H - 1}")
    w = weights[layer, head]
    tokens = token_labels(idx, tokenizer)
    title = title if title is not None else f"layer {layer}, head {head}"
    svg = attention_svg(w, tokens, title=title)
    if path is not None:
        def draw(png_path):
            import matplotlib.pyplot as plt

            size = 1.5 + 0.35 * len(tokens)
            fig, ax = plt.subplots(figsize=(size, size))
            draw_attention(ax, w, tokens)
            ax.set_title(title)
            fig.tight_layout()
            fig.savefig(png_path, dpi=120)
            plt.close(fig)

        save_figure(svg, path, draw)
    return svg


# ------------------------------------------------------------------ saliency
def _target_log_probability(model, idx, target, inputs_embeds):
    """``log p(target | x)`` as a scalar Tensor, for a classifier or a language model."""
    import npgpt.functional as F

    if hasattr(model, "num_labels"):                     # a GPTClassifier: target is a class
        z = model(idx, inputs_embeds=inputs_embeds)      # (1, num_labels)
        if model.num_labels == 1:
            if target not in (0, 1):
                raise ValueError(f"a one-logit classifier has classes 0 and 1, not {target!r}")
            # log s(z) for class 1, log(1 - s(z)) = log s(-z) for class 0 (docs/finetuning.md eq:sigmoid)
            sign = 1.0 if target == 1 else -1.0
            return F.log_softmax(_pair(z * sign), axis=-1)[0, 1]
        if not 0 <= target < model.num_labels:
            raise ValueError(f"class {target!r} does not exist: the classifier has classes 0..{model.num_labels - 1}")
        return F.log_softmax(z, axis=-1)[0, int(target)]
    # A language model: the next token's logits, the head on the trunk's last hidden state.
    hidden = model.trunk(idx, inputs_embeds=inputs_embeds)   # (1, T, C)
    logits = model.lm_head(hidden[:, -1])                                    # (1, V)
    V = logits.shape[-1]
    if not 0 <= int(target) < V:
        raise ValueError(f"target token {target!r} is outside the vocabulary 0..{V - 1}")
    return F.log_softmax(logits, axis=-1)[0, int(target)]


def _pair(z):
    """(1, 1) logit z -> (1, 2) logits [0, z]: softmax of that pair is [1 - s(z), s(z)]."""
    from npgpt.autograd import concat

    return concat([z * 0.0, z], axis=-1)


def saliency(model: Any, text_or_ids: Any, target: int | str, tokenizer: Any = None) -> tuple[list[str], np.ndarray]:
    """Gradient x input importance of every input token for one prediction (eq:saliency).

    ``score = log p(target | x)``: for a ``GPTClassifier`` ``target`` is a class
    index (0 or 1 for a one-logit classifier); for a ``GPT`` it is the next
    token after the text (an id, or a string of one token when a tokenizer is
    given). Returns ``(tokens, scores)``: the token labels and a NumPy array
    (T,) with ``scores[t] = (d score / d e_t) . e_t``, where ``e_t`` is the
    token embedding at position ``t``. Positive scores pushed the prediction
    towards ``target``, negative ones away from it.
    """
    idx = _encode(text_or_ids, tokenizer)
    gpt = getattr(model, "transformer", model)
    if isinstance(target, str):
        if tokenizer is None:
            raise ValueError("a target string needs a tokenizer")
        target_ids = tokenizer.encode(target)
        if len(target_ids) != 1:
            raise ValueError(f"target {target!r} is {len(target_ids)} tokens; give one token (or its id)")
        target = target_ids[0]
    target = int(target)
    idx = inputs.gpt_ids(gpt, idx)        # checked once, here; on the model's device
    # The embeddings become a leaf of the graph so that backward() fills their gradient;
    # they are copies, so the model's own weights are untouched.
    with no_grad():         # the table the model looks up: with trainable token rows, theirs put in
        rows = gpt.wte.table().data[idx]                             # (1, T, C)
    embeds = Tensor(rows.copy(), requires_grad=True)
    was_training = getattr(model, "training", False)
    params = model.parameters()
    wanted = [p.requires_grad for p in params]
    model.eval()            # no dropout: the explanation must be of the deterministic model
    for p in params:        # only the embeddings' gradient is needed; leave the weights' .grad alone
        p.requires_grad = False
    try:
        score = _target_log_probability(model, idx, target, embeds)
        score.backward()
    finally:
        for p, w in zip(params, wanted):
            p.requires_grad = w
        if was_training:
            model.train()
    scores = (embeds.grad * embeds.data).sum(axis=-1)[0]             # (T,)
    return token_labels(idx, tokenizer), backend.to_numpy(scores).astype(np.float64)


def saliency_svg(tokens: Sequence[str], scores: Any, title: str | None = None) -> str:
    """The tokens as a line of text, each on a background coloured by its score.

    Blue pushes towards the target, red away; intensity is ``|score|`` over
    the largest ``|score|``. Exact values are in the tooltips.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(tokens) != scores.shape[0]:
        raise ValueError(f"saliency_svg: {len(tokens)} tokens but {scores.shape[0]} scores")
    vmax = float(np.abs(scores).max()) if scores.size else 1.0
    char_w, pad, line_h, max_w = 7.8, 4, 26, 760
    x, y = 8.0, 12 + (24 if title else 0)
    boxes = []
    for tok, s in zip(tokens, scores):
        text = str(tok)
        w = char_w * len(text) + 2 * pad
        if x + w > max_w and x > 8:                      # wrap to a new line
            x, y = 8.0, y + line_h + 4
        rgb = (33, 102, 172) if s >= 0 else (178, 24, 43)
        boxes.append((x, y, w, _colour(abs(s), vmax, rgb), text, s))
        x += w + 3
    width = max_w + 16
    height = y + line_h + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="13">',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    if title:
        out.append(f'<text x="8" y="18" font-size="14">{html.escape(title)}</text>')
    for bx, by, bw, fill, text, s in boxes:
        out.append(f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{line_h}" rx="3" fill="{fill}">'
                   f'<title>{html.escape(text)}: {s:+.4f}</title></rect>')
        out.append(f'<text x="{bx + pad:.1f}" y="{by + line_h * 0.68:.1f}">{html.escape(text)}</text>')
    legend_y = y + line_h + 20
    out.append(f'<text x="8" y="{legend_y:.1f}" font-size="11" fill="#555">blue: towards the target, '
               f'red: away from it; strongest |score| = {vmax:.3g}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
