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

A sharded checkpoint (``model-00001-of-00002.safetensors`` ... and the
``model.safetensors.index.json`` that maps each tensor to its shard, as the Hub stores GPT-2
medium and larger) loads as one: ``weights_path`` returns the index, and ``weight_shapes`` and
``read_weights`` check every shard against it and merge them. ``resolve`` finds a directory
locally, among the models shipped with npgpt, or on the Hugging Face Hub (``npgpt.io.hub``).

This module knows files, not models: it reads and writes ``config.json`` and
safetensors, and imports nothing of the model. The mapping of a model's
parameters onto tensor names lives beside it (a GPT's in ``npgpt.io.hf_gpt2``,
``GPTClassifier``'s in ``npgpt.finetuning.classifier``), which imports this module,
never the other way round.
"""

import json
import math
import os
import pathlib
import struct
from typing import Any

import numpy as np

from npgpt.io import fileio, hub
from npgpt.tokenizer.bpe import GPT2_ENDOFTEXT_ID

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"     # a sharded checkpoint: tensor name -> shard file
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")    # old transformers' causal-mask buffers
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}
# Bytes per element of safetensors' dtypes, to check a tensor's byte range against its shape.
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000        # safetensors' own limit on the JSON header
MAX_CONFIG_BYTES = 16 * 2 ** 20       # a config.json is a few kB; refuse to read gigabytes
MAX_DIM = 2 ** 62                     # no tensor dimension or config size is larger (keeps messages short)


class CheckpointError(ValueError):
    """A checkpoint directory exists but its contents are wrong (names the file or tensor)."""


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in the file ``path`` (``config.json``): size, syntax and type checked."""
    path = pathlib.Path(path)
    try:    # a regular file of at most MAX_CONFIG_BYTES (not a link to /dev/zero, not a sparse giant)
        data = fileio.read_bytes(path, "config file", limit=MAX_CONFIG_BYTES)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    raw = fileio.parse_json(data, path, CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def config_int(raw: dict, key: str, path: Any, low: int = 1) -> int:
    """``raw[key]`` as an integer >= ``low`` (and below ``MAX_DIM``), or a ``CheckpointError``."""
    value = raw[key]
    if not fileio.is_int(value):
        raise CheckpointError(f"{path}: {key} must be an integer, got {value!r:.80}")
    if not low <= value < MAX_DIM:
        shown = str(value) if abs(value) < 10 ** 30 else f"a {len(str(abs(value)))}-digit number"
        raise CheckpointError(f"{path}: {key} must lie in {low}..2**62, got {shown}")
    return value


def config_float(raw: dict, key: str, default: float, path: Any, low: float, high: float,
                 high_open: bool = False, low_open: bool = False) -> float:
    """``raw.get(key, default)`` as a finite float in [low, high] (ends excluded when ``*_open``)."""
    value = raw.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{path}: {key} must be a number, got {value!r:.80}")
    value = float(value)
    if (not math.isfinite(value) or value < low or value > high or (low_open and value == low)
            or (high_open and value == high)):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise CheckpointError(f"{path}: {key} must be a finite number in {interval}, got {value!r}")
    return value


# =================================================================== saving
def hf_config(config):
    """The ``config.json`` dict transformers' ``GPT2Config`` expects for ``config`` (a ``GPTConfig``)."""
    eos = GPT2_ENDOFTEXT_ID if config.vocab_size == GPT2_ENDOFTEXT_ID + 1 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",          # GELU, tanh approximation (docs/model.md eq:gelu)
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


def write_checkpoint(directory, config, tensors, write_extra=None):
    """Write ``config`` (a dict) and ``tensors`` ({name: array}) to ``directory``: complete or refused.

    Shared by ``save_pretrained`` and ``npgpt.finetuning.classifier`` (whose config and
    tensor names are those of ``GPT2ForSequenceClassification``);
    ``write_extra(staging)``, if given, writes more files of the same version
    (the tokenizer's). Only these files are replaced: anything else in
    ``directory`` (a run's ``checkpoint/``, the user's folders, a trainer's
    ``.lock``) stays as it was.

    Every file is first written in a private directory inside ``directory``
    (``fileio.private_directory``), so a full disk or a kill there leaves the
    previous version whole. Then ``fileio.publish`` renames them into place,
    ``config.json`` last (it is what makes a directory a model): when the new
    version differs from the old one in anything but its weights, the old
    ``config.json`` is removed first, so that a kill between two renames
    leaves a directory that is refused ("no config.json"), never one whose
    files come from two versions. A save that changes only the weights
    (fine-tuning's repeated saves) is one rename: atomic.
    """
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    with fileio.private_directory(directory, ".saving.") as staging:
        with fileio.naming(staging / CONFIG_NAME), open(staging / CONFIG_NAME, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        with fileio.naming(staging / WEIGHTS_NAME):
            _write_tensors(tensors, staging / WEIGHTS_NAME)
        if write_extra is not None:
            write_extra(staging)
        fileio.publish(staging, directory, last=CONFIG_NAME, alone=WEIGHTS_NAME)
    return directory


# ================================================================== loading
def resolve(name_or_dir: str | os.PathLike, revision: str | None = None) -> pathlib.Path:
    """The checkpoint directory for a path, a model shipped with npgpt, or a Hugging Face Hub repo id.

    Tried in this order: a local directory, ``npgpt/io/pretrained/<name>``, then (for a ``str``
    such as ``"gpt2"`` or ``"org/name"``) the Hub through ``huggingface_hub``, which downloads
    ``config.json`` and the safetensors weights into its cache, or finds them there
    (``npgpt.io.hub``). ``revision`` (a branch, tag or commit) applies to the Hub only.
    """
    local = hub.local_dir(name_or_dir, revision)
    if local is not None:
        hub.refuse_run_directory(local, hub.MODEL_FILES, "checkpoint")
        return local
    directory = hub.resolve(name_or_dir, hub.MODEL_FILES, revision, what="checkpoint")
    if not (directory / WEIGHTS_NAME).is_file() and (directory / INDEX_NAME).is_file():
        shards = sorted(set(read_index(directory / INDEX_NAME).values()))
        try:
            directory = hub.snapshot(str(name_or_dir), shards, revision=directory.name)   # the same commit
        except (hub.HubNotInstalled, FileNotFoundError) as exc:
            raise FileNotFoundError(f"{name_or_dir!r}: the shards of {INDEX_NAME}, from the Hugging Face Hub: "
                                    f"{exc}") from None
    if not (directory / WEIGHTS_NAME).is_file() and not (directory / INDEX_NAME).is_file():
        files = hub.repo_files(str(name_or_dir), directory, revision)
        pickles = [n for n in files if n.endswith((".bin", ".bin.index.json"))]
        if pickles:
            raise CheckpointError(pickle_refusal(f"the Hub repo {str(name_or_dir)!r} ({directory})", pickles[0]))
    return directory


def read_config(directory):
    """GPT-2's hyper-parameters from ``config.json``, as ``GPTConfig``'s field names and values (a dict).

    ``GPTConfig.from_pretrained`` builds the config from it (this module knows
    files, not models: it imports nothing of the model, so the model can
    import it).
    """
    return config_fields(read_raw_config(directory), pathlib.Path(directory) / CONFIG_NAME)


def read_raw_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint directory as a dict, through the guarded reader
    (``read_json_object``); its fields are not interpreted here."""
    path = pathlib.Path(directory) / CONFIG_NAME
    if not path.exists():             # a link to a device or a FIFO is refused by the reader, not called missing
        raise FileNotFoundError(f"{path} is missing: a checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    return read_json_object(path)


def config_fields(raw: dict, path: Any) -> dict:
    """GPT-2's hyper-parameters in a parsed ``config.json``, each type- and range-checked.

    Sizes are positive integers (never floats, booleans or nested values),
    rates are finite numbers in range. Whether the sizes fit the weights
    file is checked separately, before a model is built (``hf_gpt2.check_hf_shapes``).
    """
    for key in ("model_type", "activation_function"):
        if key in raw and not isinstance(raw[key], str):
            raise CheckpointError(f"{path}: {key} must be a string, got {raw[key]!r:.80}")
    if raw.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}: model_type {raw['model_type']!r:.80} is not a GPT-2 model")
    activation = raw.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{path}: activation_function {activation!r:.80} is not GPT-2's tanh GELU")
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in raw]
    if raw.get("n_positions") is None and raw.get("n_ctx") is None:
        missing.append("n_positions")
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    sizes = {"vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
             "block_size": "n_positions" if raw.get("n_positions") is not None else "n_ctx"}
    fields: dict[str, Any] = {field: config_int(raw, key, path) for field, key in sizes.items()}
    if raw.get("n_inner") is not None and raw.get("n_inner") != 4 * fields["n_embd"]:
        raise CheckpointError(f"{path}: n_inner {raw['n_inner']!r:.80} is not 4 * n_embd, which npgpt's MLP assumes")
    if fields["n_embd"] % fields["n_head"]:
        raise CheckpointError(f"{path}: n_embd ({fields['n_embd']}) must be divisible by n_head ({fields['n_head']})")
    for key in ("embd_pdrop", "attn_pdrop"):        # not used, but a malformed value means a malformed file
        config_float(raw, key, 0.0, path, 0.0, 1.0, high_open=True)
    fields["dropout"] = config_float(raw, "resid_pdrop", 0.0, path, 0.0, 1.0, high_open=True)
    fields["layer_norm_epsilon"] = config_float(raw, "layer_norm_epsilon", 1e-5, path, 0.0, 1.0, low_open=True)
    return fields


def _int_list(value: Any, length: int | None = None) -> bool:
    """A list of non-negative integers below ``MAX_DIM`` (of ``length`` items when given)?"""
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(fileio.is_int(v) and 0 <= v < MAX_DIM for v in value))


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file, checked against the file's size.

    Returns ``{name: {"dtype", "shape", "data_offsets"}}`` (plus
    ``__metadata__``) and the offset where the data begins. Any bytes at all
    either pass or raise ``CheckpointError`` naming the file (and the tensor):
    the header must be a JSON object of entries whose dtype is a string,
    whose shape is a list of non-negative integers and whose two offsets lie
    in the file and agree with the shape; the tensors must tile the data
    without gaps or overlaps, up to the end of the file, as safetensors
    requires.
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
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path} is corrupt: its header claims {n:,} bytes, more than safetensors "
                                  f"allows ({MAX_HEADER_BYTES:,})")
        header = fileio.parse_json(f.read(n), f"{path} has a corrupt header", CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt header: a JSON {type(header).__name__}, not an object")
    start = 8 + n
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise CheckpointError(f"{path}: the header's __metadata__ must map strings to strings")
            continue
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and _int_list(info.get("shape"))
                and _int_list(info.get("data_offsets"), 2)):
            raise CheckpointError(f"{path}: the header entry of tensor {name!r:.200} is malformed (it needs a "
                                  f"dtype string, a shape and two byte offsets, non-negative integers): "
                                  f"{info!r:.200}")
        begin, end = info["data_offsets"]
        dtype, shape = info["dtype"], info["shape"]
        if not begin <= end:
            raise CheckpointError(f"{path}: tensor {name!r:.200} has invalid byte offsets {begin}..{end}")
        if start + end > size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r:.200} needs bytes {begin}..{end} of the "
                                  f"data but the file holds only {size - start}")
        if dtype in _ITEMSIZES:
            nbytes, exact = (0 if 0 in shape else _ITEMSIZES[dtype]), True
            for i, dim in enumerate(shape):      # one at a time: a long shape of huge dims stops at once
                nbytes *= dim
                if nbytes > end - begin and i + 1 < len(shape):
                    exact = False
                    break
            if nbytes != end - begin:
                shown = f"{tuple(shape)}" if len(shape) <= 8 else f"of {len(shape)} dimensions"
                need = nbytes if exact else f"more than {end - begin}"
                raise CheckpointError(f"{path}: tensor {name!r:.200} of shape {shown:.200} and dtype {dtype} "
                                      f"should take {need} bytes, the header gives {end - begin}")
        ranges.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(ranges):
        if begin != covered:
            raise CheckpointError(f"{path}: tensor {name!r:.200} starts at byte {begin} of the data, not at "
                                  f"{covered} (tensors must follow each other without gaps or overlaps)")
        covered = end
    if start + covered != size:
        raise CheckpointError(f"{path} is corrupt: its tensors end at byte {start + covered}, the file has {size}")
    return header, start


def tensor_shapes(header: dict) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a header's tensors, without the metadata and the old causal-mask buffers."""
    return {name: tuple(info["shape"]) for name, info in header.items()
            if name != "__metadata__" and not name.endswith(_IGNORED_SUFFIXES)}


def _read_bf16(path, info, start):
    """bfloat16 -> float32: a bfloat16 is the top 16 bits of a float32, so shift them up."""
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def read_tensors(path: str | os.PathLike, allow_non_finite: bool = False) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` from a safetensors file; float16/bfloat16 are upcast.

    A tensor holding NaN or infinity (or a float64 value beyond float32's
    range) is refused with its name, unless ``allow_non_finite`` (to inspect
    such a file). safetensors' own errors come out as ``CheckpointError``.
    """
    from safetensors import SafetensorError, safe_open

    header, start = read_header(path)
    tensors = {}
    name = None
    try:
        with safe_open(str(path), framework="np") as f:
            for name, info in header.items():
                if name == "__metadata__" or name.endswith(_IGNORED_SUFFIXES):
                    continue
                if info["dtype"] not in _DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r:.200} has dtype {info['dtype']!r:.40}; "
                                          "npgpt reads F32, F16, BF16 and F64")
                array = _read_bf16(path, info, start) if info["dtype"] == "BF16" else f.get_tensor(name)
                with np.errstate(over="ignore"):          # float64 beyond float32's range becomes inf: refused below
                    array = np.ascontiguousarray(array, dtype=np.float32)
                if not allow_non_finite:
                    _check_finite(array, name, path)
                tensors[name] = array
    except SafetensorError as exc:
        where = f" (reading tensor {name!r:.200})" if name is not None else ""
        raise CheckpointError(f"{path}: safetensors refuses the file{where}: {exc}") from None
    return tensors


def _check_finite(array: np.ndarray, name: str, path: Any) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        bad = array.size - int(np.count_nonzero(finite))
        first = np.unravel_index(int(np.argmin(finite)), array.shape)
        raise CheckpointError(f"{path}: tensor {name!r} holds {bad:,} non-finite value(s) (NaN or infinity), the "
                              f"first at index {tuple(int(i) for i in first)}; a model with them computes only "
                              "NaN. To inspect such a file, load it with allow_non_finite=True")


def pickle_refusal(where: Any, name: str = "pytorch_model.bin") -> str:
    """Why npgpt will not load ``name`` (a pickle) from ``where``, and what to do instead."""
    return (f"{where} holds only {name}: npgpt reads safetensors only, because a .bin file is a pickle and "
            "loading it would run code from the file. Use a repo or directory that has model.safetensors, or "
            "convert this one where you trust it: GPT2LMHeadModel.from_pretrained(dir)"
            ".save_pretrained(dir, safe_serialization=True)")


def weights_path(directory: str | os.PathLike) -> pathlib.Path:
    """The weights of a checkpoint directory: ``model.safetensors``, else the index of a sharded
    checkpoint (``model.safetensors.index.json``); a pickle-only directory is refused.

    Read what it names with ``weight_shapes`` and ``read_weights``, which take either.
    """
    directory = pathlib.Path(directory)
    path = directory / WEIGHTS_NAME
    if path.exists():
        if not path.is_file():        # a FIFO would block the reader, a device feed it forever
            raise CheckpointError(f"{path} is not a regular file (a device, FIFO or socket, or a link to one)")
        return path
    if (directory / INDEX_NAME).exists():
        return directory / INDEX_NAME
    if (directory / "pytorch_model.bin").exists():
        raise CheckpointError(pickle_refusal(directory))
    raise FileNotFoundError(f"{path} is missing: a checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                            f"(or {INDEX_NAME} and its shards)")


# ======================================================= sharded checkpoints
def read_index(path: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` ({tensor name: shard file name}) of a ``model.safetensors.index.json``.

    The file goes through the guarded JSON reader; ``weight_map`` must be a non-empty object
    whose values are plain file names ending in ``.safetensors`` (no directory part, so an index
    cannot point outside its checkpoint). Anything else is a ``CheckpointError`` naming the file.
    """
    path = pathlib.Path(path)
    raw = read_json_object(path)
    if not isinstance(raw.get("metadata", {}), dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object, got {raw['metadata']!r:.80}")
    weight_map = raw.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} must hold a non-empty object weight_map (tensor name -> shard file), "
                              f"got {weight_map!r:.80}")
    for name, shard in weight_map.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and "/" not in shard
                and "\\" not in shard):
            raise CheckpointError(f"{path}: tensor {name!r:.200} maps to {shard!r:.200}, which is not the file name "
                                  "of a .safetensors shard in the same directory")
    return weight_map


def _shard_headers(index: pathlib.Path) -> dict[pathlib.Path, dict]:
    """``{shard path: header}`` of a sharded checkpoint, each header checked (``read_header``) and
    the shards checked against the index: every shard is there, every tensor is in the shard the
    index names, and no shard holds a tensor the index does not place in it."""
    weight_map = read_index(index)
    headers = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {index} places tensors in it")
        headers[path] = read_header(path)[0]
    for name, shard in weight_map.items():
        if name not in headers[index.parent / shard]:
            raise CheckpointError(f"{index}: tensor {name!r:.200} should be in {shard}, which does not hold it")
    for path, header in headers.items():
        for name in header:
            if name != "__metadata__" and weight_map.get(name) != path.name:
                where = f"places it in {weight_map[name]}" if name in weight_map else "does not name it"
                raise CheckpointError(f"{path} holds tensor {name!r:.200}, but {index} {where}")
    return headers


def weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the tensors of a weights file or of a sharded checkpoint's index
    (``weights_path``), from the headers only: nothing is allocated."""
    path = pathlib.Path(path)
    if path.name != INDEX_NAME:
        return tensor_shapes(read_header(path)[0])
    shapes: dict[str, tuple[int, ...]] = {}
    for header in _shard_headers(path).values():
        shapes.update(tensor_shapes(header))
    return shapes


def read_weights(path: str | os.PathLike, allow_non_finite: bool = False) -> dict[str, np.ndarray]:
    """``read_tensors`` of a weights file, or of every shard of a sharded checkpoint's index, merged."""
    path = pathlib.Path(path)
    if path.name != INDEX_NAME:
        return read_tensors(path, allow_non_finite=allow_non_finite)
    tensors: dict[str, np.ndarray] = {}
    for shard in _shard_headers(path):
        tensors.update(read_tensors(shard, allow_non_finite=allow_non_finite))
    return tensors
