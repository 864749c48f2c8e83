"""What the page draws beside an answer: attention maps and prompt saliency (docs/serving.md, "The page").

Both are npgpt's own pictures (``npgpt.viz``, docs/interpretability.md): the
attention probabilities of one layer and head over the conversation, and the
gradient x input saliency of each context token for one answer token. The
request is checked here; the returned function runs on the model's thread
(``Batcher.call``), between two decoding steps.
"""

from collections.abc import Callable
from typing import Any

from npgpt import viz
from npgpt.apps.serve.protocol import ApiError


def _field(body: Any, name: str, kind: type, default: Any = None) -> Any:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    value = body.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(400, f"'{name}' must be a {kind.__name__}, got {value!r:.60}", param=name)
    return value


def _context(tokenizer: Any, body: Any, name: str, answer: str | None = None) -> list[int]:
    """The ids of ``body[name]`` (a text), or of ``body["messages"]`` (a conversation, rendered by the chat
    template with a generation prompt, then ``answer`` when given)."""
    if isinstance(body, dict) and "messages" in body:
        messages = body["messages"]
        try:
            text = tokenizer.render_chat(messages, add_generation_prompt=True)
        except ValueError as exc:
            raise ApiError(400, f"'messages': {exc}", param="messages") from None
        return tokenizer.encode(text + (answer or ""), allowed_special="all")
    return tokenizer.encode(_field(body, name, str) + (answer or ""), allowed_special="all")


def attention_job(model: Any, tokenizer: Any, body: Any) -> Callable[[], dict[str, Any]]:
    """``{"text" or "messages" and "answer", "layer", "head"}`` -> a function returning the tokens,
    the (T, T) map of that layer and head, and its SVG (the last ``block_size`` tokens)."""
    answer = body.get("answer") if isinstance(body, dict) and "messages" in body else None
    if answer is not None and not isinstance(answer, str):
        raise ApiError(400, "'answer' must be a string", param="answer")
    ids = _context(tokenizer, body, "text", answer)[-model.config.block_size:]
    if not ids:
        raise ApiError(400, "the text is empty", param="text")
    layer = _field(body, "layer", int, 0)
    head = _field(body, "head", int, 0)
    L, H = model.config.n_layer, model.config.n_head
    if not 0 <= layer < L:
        raise ApiError(400, f"layer {layer} does not exist: the model has layers 0..{L - 1}", param="layer")
    if not 0 <= head < H:
        raise ApiError(400, f"head {head} does not exist: each layer has heads 0..{H - 1}", param="head")

    def run() -> dict[str, Any]:
        weights = viz.attention_weights(model, ids)[layer, head]          # (T, T)
        labels = viz.token_labels(ids, tokenizer)
        return {"tokens": labels, "layer": layer, "head": head, "weights": weights.round(5).tolist(),
                "svg": viz.attention_svg(weights, labels, title=f"layer {layer}, head {head}")}

    return run


def saliency_job(model: Any, tokenizer: Any, body: Any) -> Callable[[], dict[str, Any]]:
    """``{"context" or "messages", "answer", "position"}`` -> a function returning the saliency of each
    context token (the prompt and the answer's first ``position`` tokens) for the answer's token at
    ``position``."""
    answer = _field(body, "answer", str)
    position = _field(body, "position", int, 0)
    answer_ids = tokenizer.encode(answer, allowed_special="all")
    if not 0 <= position < len(answer_ids):
        raise ApiError(400, f"position {position} is not a token of the answer (it has {len(answer_ids)})",
                       param="position")
    ids = (_context(tokenizer, body, "context") + answer_ids[:position])[-model.config.block_size:]
    if not ids:
        raise ApiError(400, "'context' is empty", param="context")
    target = answer_ids[position]

    def run() -> dict[str, Any]:
        labels, scores = viz.saliency(model, ids, target, tokenizer)
        title = f"saliency for {tokenizer.decode([target])!r}"
        return {"tokens": labels, "target": tokenizer.decode([target]), "scores": scores.round(6).tolist(),
                "svg": viz.saliency_svg(labels, scores, title=title)}

    return run
