"""GPT-2 in Hugging Face's files: the mapping of a ``GPT``'s parameters onto tensor names and shapes.

Companion of ``docs/model.md`` (section "Checkpoints").

npgpt's parameter names are GPT-2's without the ``transformer.`` prefix, and
its linear weights have GPT-2's Conv1D layout (in, out), so the mapping is the
prefix alone: nothing is transposed or renamed. The LM head is tied to
``wte``: a file's ``lm_head.weight`` is accepted only when it equals ``wte``.
Every name and shape of a file is compared with what its ``config.json``
implies before a model is built, so a config that claims sizes the weights
do not hold is a ``CheckpointError`` at once, not a ``MemoryError``.

``npgpt.io.checkpoint`` knows files (safetensors, ``config.json``, the Hub);
this module knows GPT-2's layout; ``npgpt.model`` knows neither, and calls
``load`` and ``hf_tensors`` from ``GPT.from_pretrained`` and ``GPT.save_pretrained``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from npgpt import backend
from npgpt.io import checkpoint

HF_PREFIX = "transformer."   # GPT-2's tensor names in Hugging Face files: transformer.h.0.attn.c_attn.weight


def tensor_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a GPT's weights (GPT-2's names without ``transformer.``), allocating nothing.

    The same names and shapes as ``GPT(config).named_parameters()`` (tested).
    """
    V, P, C = config.vocab_size, config.block_size, config.n_embd
    block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
             "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
             "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
             "mlp.c_proj.bias": (C,)}
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def _unprefixed(named: dict[str, Any]) -> dict[str, Any]:
    return {name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else name: value for name, value in named.items()}


def check_hf_shapes(config: Any, shapes: dict[str, tuple[int, ...]], source: Any = "the checkpoint") -> None:
    """Compare a checkpoint's ``{name: shape}`` (from its header) with what ``config`` implies.

    Names may carry the ``transformer.`` prefix; ``lm_head.weight`` must have
    ``wte``'s shape. Errors are ``CheckpointError``s naming ``source`` and the tensor.
    """
    names = {name: tuple(shape) for name, shape in _unprefixed(shapes).items()}
    head = names.pop("lm_head.weight", None)
    needed = 4 + 12 * config.n_layer
    if needed > 2 * len(names) + 16:      # checked first: listing the expected names costs O(n_layer)
        raise checkpoint.CheckpointError(f"{source}: config.json says n_layer={config.n_layer}, which needs "
                                         f"{needed:,} tensors; the file holds {len(names):,}")
    expected = tensor_shapes(config)
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


def hf_tensors(model: Any) -> dict[str, np.ndarray]:
    """A GPT's weights under GPT-2's Hugging Face names (``transformer.h.0...``), float32 NumPy arrays."""
    return {HF_PREFIX + name: np.ascontiguousarray(backend.to_numpy(p.data).astype(np.float32, copy=False))
            for name, p in model.named_parameters()}


def load_hf_tensors(model: Any, tensors: dict[str, np.ndarray], source: Any = "the checkpoint") -> Any:
    """Put weights named as in a Hugging Face GPT-2 file into ``model`` (a GPT); returns the model.

    Every name and shape is checked first (``check_hf_shapes``); an
    ``lm_head.weight`` must equal ``wte`` (npgpt has no untied head). The
    arrays are taken over, not copied, and moved to the model's device.
    """
    loaded = _unprefixed(tensors)
    check_hf_shapes(model.config, {name: array.shape for name, array in loaded.items()}, source)
    head = loaded.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, loaded["wte.weight"]):
        raise checkpoint.CheckpointError(f"{source}: lm_head.weight differs from wte.weight; npgpt's LM head is "
                                         "tied to the token embedding (as GPT-2's is) and cannot hold a "
                                         "separate head")
    for name, p in model.named_parameters():
        p.data = backend.to_device(loaded[name], p.device)
    return model


def load(name_or_dir: str | os.PathLike, config_class: Any, *, revision: str | None = None,
         allow_non_finite: bool = False) -> tuple[Any, dict[str, np.ndarray], Any]:
    """``(config, tensors, path)`` of a GPT-2 checkpoint, every file checked before anything is built.

    ``name_or_dir``: a checkpoint directory, a model shipped in npgpt, or a
    Hub repo (``npgpt.io.checkpoint.resolve``, in that order; ``revision`` picks
    a Hub version). Only safetensors are read, in one file or sharded. The
    header's shapes are compared with ``config.json`` before the weights are
    read; weights holding NaN or infinity are refused unless ``allow_non_finite``.
    """
    directory = checkpoint.resolve(name_or_dir, revision)
    config = config_class.from_pretrained(directory)
    path = checkpoint.weights_path(directory)          # model.safetensors, or a sharded checkpoint's index
    check_hf_shapes(config, checkpoint.weight_shapes(path), path)
    return config, checkpoint.read_weights(path, allow_non_finite=allow_non_finite), path
