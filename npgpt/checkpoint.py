"""Checkpoints in Hugging Face's GPT-2 layout: ``config.json`` + ``model.safetensors``.

Companion of ``docs/model.md`` (section "Checkpoints").

A checkpoint directory written here loads with
``transformers.GPT2LMHeadModel.from_pretrained(dir)`` and the other way round:
the tensors carry GPT-2's names (``transformer.h.0.attn.c_attn.weight`` ...),
GPT-2's Conv1D layout (in, out) is also npgpt's, and the LM head is tied to
``wte`` so no ``lm_head.weight`` is stored.

Why safetensors and never ``pytorch_model.bin``: a ``.bin`` file is a pickle,
and unpickling runs arbitrary code from the file. A safetensors file is an
8-byte header length, a JSON header (name -> dtype, shape, byte range) and raw
little-endian bytes: reading it runs nothing. The header is checked here
before any tensor is read, so a truncated or corrupt file is reported by the
name of the tensor that does not fit.

Saving is atomic: both files are written into a temporary directory next to
the target, flushed to disk (fsync), and only then renamed into place. A crash
or an error while writing leaves the previous checkpoint untouched.

This module knows files, not models: it reads and writes ``config.json`` and
safetensors, and imports nothing of the model. The mapping of a model's
parameters onto tensor names lives with each model (``GPT.save_pretrained``
and ``GPT.from_pretrained`` in ``npgpt.model``, ``GPTClassifier``'s in
``npgpt.classifier``), which import this module, never the other way round.
"""

import json
import os
import pathlib
import shutil
import struct

import numpy as np

from npgpt import fileio
from npgpt.tokenizer.bpe import GPT2_ENDOFTEXT_ID

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")    # old transformers' causal-mask buffers
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}


class CheckpointError(ValueError):
    """A checkpoint directory exists but its contents are wrong (names the file or tensor)."""


# =================================================================== saving
def hf_config(config):
    """The ``config.json`` dict transformers' ``GPT2Config`` expects for ``config`` (a ``GPTConfig``)."""
    eos = GPT2_ENDOFTEXT_ID if config.vocab_size == GPT2_ENDOFTEXT_ID + 1 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",          # GELU, tanh approximation (docs/model.md eq. 7)
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,                            # 4 * n_embd
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def _write_tensors(tensors, path):
    """Write ``{name: array}`` as safetensors (a separate function so tests can make it fail)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def write_checkpoint(directory, config, tensors):
    """Write ``config`` (a dict) and ``tensors`` ({name: array}) to ``directory`` atomically.

    Shared by ``save_pretrained`` and ``npgpt.classifier`` (whose config and
    tensor names are those of ``GPT2ForSequenceClassification``).
    """
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory")
    staging = fileio.staging_directory(directory)
    try:
        with open(staging / CONFIG_NAME, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        _write_tensors(tensors, staging / WEIGHTS_NAME)
        if directory.exists():       # keep the files we do not own (tokenizer files ...)
            for item in directory.iterdir():
                if item.name not in (CONFIG_NAME, WEIGHTS_NAME) and item.is_file():
                    shutil.copy2(item, staging / item.name)
        fileio.replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


# ================================================================== loading
def resolve(name_or_dir):
    """The checkpoint directory for a path, or for the name of a model shipped with npgpt."""
    path = pathlib.Path(name_or_dir)
    tried = [path]
    if path.is_dir():
        return path
    shipped = PRETRAINED_DIR / str(name_or_dir)
    tried.append(shipped)
    if shipped.is_dir():
        return shipped
    available = sorted(p.name for p in PRETRAINED_DIR.iterdir() if p.is_dir()) if PRETRAINED_DIR.is_dir() else []
    raise FileNotFoundError(f"no checkpoint {str(name_or_dir)!r}: tried {', '.join(str(t) for t in tried)} "
                            f"(shipped models: {available or 'none'})")


def read_config(directory):
    """GPT-2's hyper-parameters from ``config.json``, as ``GPTConfig``'s field names and values (a dict).

    ``GPTConfig.from_pretrained`` builds the config from it (this module knows
    files, not models: it imports nothing of the model, so the model can
    import it).
    """
    path = pathlib.Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type {raw['model_type']!r} is not a GPT-2 model")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{path}: activation_function {activation!r} is not GPT-2's tanh GELU")
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in raw]
    if "n_positions" not in raw and "n_ctx" not in raw:
        missing.append("n_positions")
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if raw.get("n_inner") not in (None, 4 * raw["n_embd"]):
        raise CheckpointError(f"{path}: n_inner {raw['n_inner']} is not 4 * n_embd, which npgpt's MLP assumes")
    try:
        return {"vocab_size": raw["vocab_size"], "block_size": raw.get("n_positions", raw.get("n_ctx")),
                "n_layer": raw["n_layer"], "n_head": raw["n_head"], "n_embd": raw["n_embd"],
                "dropout": float(raw.get("resid_pdrop", 0.0)),
                "layer_norm_epsilon": float(raw.get("layer_norm_epsilon", 1e-5))}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_header(path):
    """The JSON header of a safetensors file, checked against the file's size.

    Returns ``{name: {"dtype", "shape", "data_offsets"}}`` (plus
    ``__metadata__``) and the offset where the data begins.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated or corrupt: its header claims {n} bytes, "
                                  f"the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} has a corrupt header: {exc}") from None
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype, shape = info["dtype"], tuple(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: the header entry of tensor {name!r} is malformed: {info!r}") from None
        if not 0 <= begin <= end:
            raise CheckpointError(f"{path}: tensor {name!r} has invalid byte offsets {begin}..{end}")
        if start + end > size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} needs bytes {begin}..{end} of the data "
                                  f"but the file holds only {size - start}")
        if dtype in _DTYPES:
            itemsize = 2 if dtype == "BF16" else np.dtype(_DTYPES[dtype]).itemsize
            if end - begin != itemsize * int(np.prod(shape)):
                raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} "
                                      f"should take {itemsize * int(np.prod(shape))} bytes, the header gives "
                                      f"{end - begin}")
    return header, start


def _read_bf16(path, info, start):
    """bfloat16 -> float32: a bfloat16 is the top 16 bits of a float32, so shift them up."""
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def read_tensors(path):
    """``{name: float32 array}`` from a safetensors file; float16/bfloat16 are upcast."""
    from safetensors import safe_open

    header, start = read_header(path)
    tensors = {}
    with safe_open(str(path), framework="np") as f:
        for name, info in header.items():
            if name == "__metadata__" or name.endswith(_IGNORED_SUFFIXES):
                continue
            if info["dtype"] not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']}; "
                                      "npgpt reads F32, F16, BF16 and F64")
            array = _read_bf16(path, info, start) if info["dtype"] == "BF16" else f.get_tensor(name)
            tensors[name] = np.ascontiguousarray(array, dtype=np.float32)
    return tensors


def weights_path(directory):
    """``model.safetensors`` of a checkpoint directory; a pickle-only or sharded directory is refused."""
    path = directory / WEIGHTS_NAME
    if path.is_file():
        return path
    if (directory / "pytorch_model.bin").exists():
        raise CheckpointError(f"{directory} holds only pytorch_model.bin: npgpt reads safetensors only, "
                              "because a .bin file is a pickle and loading it would run code from the file. "
                              "Convert it where you trust it: GPT2LMHeadModel.from_pretrained(dir)"
                              ".save_pretrained(dir, safe_serialization=True)")
    if (directory / "model.safetensors.index.json").exists():
        raise CheckpointError(f"{directory} holds a sharded checkpoint; npgpt reads a single {WEIGHTS_NAME}")
    raise FileNotFoundError(f"{path} is missing: a checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME}")
