"""Chat templates: a conversation as text and as ids, its role markers special tokens (docs/agent.md).

A chat model reads a conversation, a list of messages ``{"role": ..., "content": ...}`` with the
roles ``system``, ``user`` and ``assistant``, as one token sequence in which the turns are marked.
npgpt marks them as ChatML does (the format of OpenAI's chat models, used by Qwen, SmolLM and many
others)::

    <|im_start|>system\\nYou are terse.<|im_end|>\\n
    <|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\nHello.<|im_end|>\\n

``<|im_start|>`` and ``<|im_end|>`` are special tokens: one id each, never produced by ordinary
text. A model is asked to answer by ending the prompt with ``<|im_start|>assistant\\n`` (the
*generation prompt*); it answers and says ``<|im_end|>``, the end of its turn, where generation stops.

The template is stored with the tokenizer the way Hugging Face stores it: a Jinja string under
``chat_template`` in tokenizer_config.json, so ``transformers``' ``apply_chat_template`` renders a
saved npgpt tokenizer's conversations to the same text (tested). npgpt renders its own template
in plain Python (no Jinja needed) and recognises it by its text; each version of the template is
kept in ``TEMPLATES`` so that a model saved with version 1 renders version 1 forever. A template
npgpt did not write (one loaded from the Hub) is rendered with Jinja, sandboxed as Hugging Face does.

Tokenizing: a message's content is always encoded as ordinary text, so a user who types
``<|im_end|>`` cannot end a turn or forge one (Hugging Face tokenizes the rendered text, where such
text would become the marker); only the template's own markers are special ids.

Nothing here imports the model or autograd: the tokenizer stands alone.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from npgpt.tokenizer.core import Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ROLES = ("system", "user", "assistant")

# Version 1 of npgpt's template, ChatML. The Jinja comment carries the version inside the string,
# so it travels with every saved model. Written so that Jinja's whitespace settings do not matter
# ("{{-", "-}}" everywhere): Hugging Face renders with trim_blocks and lstrip_blocks, plain Jinja without.
CHATML_V1 = (
    "{#- npgpt chat template v1 (ChatML, docs/agent.md) -#}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TEMPLATES = {1: CHATML_V1}          # {version: Jinja string}; a new version is added, never edited
CHAT_TEMPLATE = TEMPLATES[max(TEMPLATES)]   # what ``add_chat_tokens`` installs

NO_TEMPLATE_HELP = (
    "this tokenizer has no chat template: it was not fine-tuned for chat. Add npgpt's (ChatML) template "
    "and its role markers with npgpt.finetuning.sft.add_chat_tokens(model, tokenizer), then fine-tune on "
    "conversations: npgpt sft --model MODEL --data chats.jsonl --out DIR (docs/agent.md)"
)


class ChatTemplateError(ValueError):
    """A tokenizer has no chat template, or a conversation does not fit the template's rules."""


def template_version(template: Optional[str]) -> Optional[int]:
    """The version of npgpt's template that ``template`` is, or None (no template, or a foreign one)."""
    return next((v for v, t in TEMPLATES.items() if t == template), None)


def check_messages(messages: Any) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or a ``ChatTemplateError`` naming the message.

    Each message is a mapping with a ``role`` among ``ROLES`` and a ``content`` string; other keys
    (``name``, ``tool_calls``...) are ignored by the template and dropped here.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"a conversation is a list of messages, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"message {i} must be an object with 'role' and 'content', got {m!r:.80}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatTemplateError(f"message {i} has role {role!r:.40}; the roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatTemplateError(f"message {i} ({role}) needs a string 'content', got {content!r:.80}")
        out.append({"role": role, "content": content})
    return out


def render(template: Optional[str], messages: Any, add_generation_prompt: bool = False) -> str:
    """The text of a conversation under ``template`` (see ``Tokenizer.render_chat``)."""
    if template is None:
        raise ChatTemplateError(NO_TEMPLATE_HELP)
    messages = check_messages(messages)
    if template_version(template) == 1:
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")
    return _render_jinja(template, messages, add_generation_prompt)


def _render_jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """A foreign template, rendered as ``transformers`` does: Jinja's sandbox, trim_blocks, lstrip_blocks."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ChatTemplateError("this tokenizer's chat template is not npgpt's own, and rendering another "
                                "template needs Jinja: pip install jinja2") from None

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from None


def encode(tokenizer: Tokenizer, messages: Any, add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """``(ids, trained)``: a conversation's ids, and which of them the assistant says.

    ``trained[i]`` is True for the tokens of every assistant message's content and for the
    ``<|im_end|>`` that closes it: the tokens a supervised fine-tune learns to produce (docs/agent.md,
    "The SFT objective"). The role headers (``<|im_start|>assistant\\n``), the other roles' turns and
    the newline after each ``<|im_end|>`` are context only.

    The ids are those of encoding ``render(...)`` with the two markers as special tokens, except that a
    marker's text inside a content stays ordinary text. A header and its content are encoded
    together (so the ids are the rendered text's); a token that straddles the two, such as ``"\\n "``
    before a content that starts with a space, counts as the assistant's.
    Foreign templates have no such split: their ids are the rendered text's, every special token
    allowed (as Hugging Face does), and ``trained`` is all False.
    """
    template = tokenizer.chat_template
    if template is None:
        raise ChatTemplateError(NO_TEMPLATE_HELP)
    if template_version(template) is None:
        ids = tokenizer.encode(render(template, messages, add_generation_prompt), allowed_special="all")
        return ids, [False] * len(ids)
    messages = check_messages(messages)
    missing = [m for m in (IM_START, IM_END) if m not in tokenizer.special_tokens]
    if missing:
        raise ChatTemplateError(f"the tokenizer has npgpt's chat template but not its special token(s) {missing}; "
                                "add them with npgpt.finetuning.sft.add_chat_tokens")
    start, end = tokenizer.special_tokens[IM_START], tokenizer.special_tokens[IM_END]
    newline = tokenizer.encode_ordinary("\n")
    ids: list[int] = []
    trained: list[bool] = []
    for m in messages:
        header = f"{m['role']}\n"
        body = tokenizer.encode_ordinary(header + m["content"])
        ids.append(start)
        trained.append(False)
        if m["role"] == "assistant":
            ends = _byte_ends(tokenizer, body)
            trained += [e > len(header.encode("utf-8")) for e in ends]
        else:
            trained += [False] * len(body)
        ids += body
        ids.append(end)
        trained.append(m["role"] == "assistant")
        ids += newline
        trained += [False] * len(newline)
    if add_generation_prompt:
        prompt = [start] + tokenizer.encode_ordinary("assistant\n")
        ids += prompt
        trained += [False] * len(prompt)
    return ids, trained


def _byte_ends(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """For each id, the byte offset just past it in the decoded text."""
    ends, total = [], 0
    for i in ids:
        total += len(tokenizer.token_bytes(i))
        ends.append(total)
    return ends


def end_of_turn_id(tokenizer: Tokenizer) -> Optional[int]:
    """The id at which an answer ends (``<|im_end|>``) when the tokenizer has a chat template that uses it."""
    template = tokenizer.chat_template
    if template is None or IM_END not in template or IM_END not in tokenizer.special_tokens:
        return None
    return tokenizer.special_tokens[IM_END]


def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of ``tokenizer`` with ``<|im_start|>`` and ``<|im_end|>`` appended as special tokens (those
    it lacks, at the next ids) and npgpt's chat template set. The model's embedding must grow to
    match: ``npgpt.finetuning.sft.add_chat_tokens`` does both."""
    tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    specials = dict(tokenizer.special_tokens)
    for marker in (IM_START, IM_END):
        if marker not in specials:
            specials[marker] = len(tokens)
            tokens.append(marker.encode("utf-8"))
    return type(tokenizer)(tokens, tokenizer.merges, specials, chat_template=CHAT_TEMPLATE)


def read_template(directory: pathlib.Path) -> Optional[str]:
    """The chat template saved in a tokenizer directory, or None.

    Hugging Face keeps it under ``chat_template`` in tokenizer_config.json (a string, or a list of
    ``{"name", "template"}`` of which the one named ``default`` is used), and since 2024 may write it
    to chat_template.jinja instead; both are read, the file first.
    """
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        from npgpt.tokenizer.formats import read_text

        return read_text(jinja)
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    from npgpt.tokenizer.formats import TokenizerFileError, read_json

    data = read_json(config)
    value = data.get("chat_template") if isinstance(data, dict) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise TokenizerFileError(f"{config}: chat_template must be a Jinja string or a list of "
                             f"{{'name', 'template'}} with one named 'default', got {json.dumps(value)[:80]}")
