"""Malformed files and unlucky runs: one test per defect class of the hardening issue.

Every loader must turn bad bytes into one named error (``CheckpointError`` for checkpoints,
``TokenizerFileError`` for tokenizer files, ``ValueError`` for token data and labelled files),
never a ``TypeError``, ``IndexError``, ``RecursionError``, ``MemoryError`` or a hang; the command
line reports every expected failure as one line. A run directory's one writer: tests/test_rundir.py.
The property tests that mutate valid files at random are in tests/suites/test_fuzz_files.py.
"""

import errno
import json
import os
import pathlib
import random
import resource
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from run_helpers import TEXT, TRAIN_FLAGS

from npgpt.apps.cli import main
from npgpt.finetuning import labelled
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.io import checkpoint, fileio
from npgpt.io.checkpoint import CheckpointError
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import ENDOFTEXT, Tokenizer, TokenizerFileError
from npgpt.tokenizer.bpe import token_text
from npgpt.tokenizer.formats import read_tiktoken
from npgpt.tokenizer.reference import MergeTable
from npgpt.training import data, rundir

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8)


def tiny_checkpoint(directory, seed=0):
    return GPT(TINY, seed=seed).save_pretrained(directory)


def safetensors_bytes(header, data=b""):
    """A safetensors file from a header (a dict, or the JSON text as str/bytes) and the data bytes."""
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(text)) + text + data


def one_tensor(**entry):
    """A one-tensor header, its fields overridden by ``entry``."""
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **entry}}


def error_of(call):
    """The exception ``call()`` raises (the test fails if it returns)."""
    try:
        call()
    except Exception as exc:          # noqa: BLE001 - the type is what the tests look at
        return exc
    pytest.fail("no error was raised")


# ============================================================ checkpoints: header
@pytest.mark.parametrize("header", [
    b"[1, 2]", b'"a string"', b"42", b"null",                                   # not an object
    b"[" * 50_000 + b"]" * 50_000,                                              # deep nesting
    b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}',   # beyond the digit limit
    b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {}}',  # a key twice
    b"\xff\xfe{}",                                                              # not UTF-8
], ids=["list", "string", "number", "null", "deep", "deep-value", "digits", "duplicate", "latin1"])
def test_a_header_that_is_no_valid_json_object_is_a_checkpoint_error(tmp_path, header):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(header, b"\0" * 8))
    exc = error_of(lambda: checkpoint.read_header(path))
    assert type(exc) is CheckpointError and str(path) in str(exc)


@pytest.mark.parametrize("entry", [
    dict(data_offsets="0,8"), dict(data_offsets=[0.0, 8.0]), dict(data_offsets=[True, 8]), dict(data_offsets=[-8, 0]),
    dict(data_offsets=[0]), dict(data_offsets=[0, 8, 9]), dict(data_offsets=None), dict(data_offsets={"0": 8}),
    dict(data_offsets=[8, 0]), dict(data_offsets=[0, 2 ** 64]),
    dict(shape="2"), dict(shape=[2.0]), dict(shape=[-2]), dict(shape=[[2]]), dict(shape={"0": 2}), dict(shape=2),
    dict(shape=[3]), dict(shape=[2 ** 40, 2 ** 40, 2 ** 40]), dict(shape=[10 ** 30]), dict(shape=[1] * 10_000 + [3]),
    dict(dtype=5), dict(dtype=None), dict(dtype=["F32"]), dict(dtype={"F32": 1}),
], ids=lambda e: f"{next(iter(e))}={str(next(iter(e.values())))[:20]}")
def test_malformed_tensor_entries_are_named(tmp_path, entry):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(one_tensor(**entry), b"\0" * 8))
    exc = error_of(lambda: checkpoint.read_header(path))
    assert type(exc) is CheckpointError and str(path) in str(exc) and "'a'" in str(exc), exc


@pytest.mark.parametrize("header, data, message", [
    ({"a": [1, 2]}, b"", "tensor 'a' is malformed"),
    ({"__metadata__": {"format": 5}}, b"", "__metadata__"),
    ({"__metadata__": [1]}, b"", "__metadata__"),
    ({**one_tensor(), "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\0" * 16, "without gaps"),
    ({**one_tensor(), "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "without gaps"),
    (one_tensor(), b"\0" * 12, "tensors end at byte"),                    # bytes after the last tensor
], ids=["entry-not-object", "metadata-value", "metadata-list", "gap", "overlap", "trailing-bytes"])
def test_tensors_must_tile_the_data_as_safetensors_requires(tmp_path, header, data, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(CheckpointError, match=message):
        checkpoint.read_header(path)


def test_safetensors_own_errors_are_wrapped_and_name_the_file(tmp_path):
    directory = tiny_checkpoint(tmp_path / "ckpt")
    path = directory / "model.safetensors"
    header, start = checkpoint.read_header(path)
    header["transformer.ln_f.bias"]["dtype"] = "Q7"          # unknown to npgpt's pre-check and to safetensors
    raw = path.read_bytes()
    path.write_bytes(safetensors_bytes(header, raw[start:]))
    exc = error_of(lambda: checkpoint.read_tensors(path))
    assert type(exc) is CheckpointError and "safetensors refuses the file" in str(exc) and str(path) in str(exc)


def test_the_loaders_pass_everything_safetensors_accepts(tmp_path):
    """The pre-check is no stricter than safetensors on what it writes: odd but valid files load."""
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "odd.safetensors"
    save_file({"empty": np.zeros((0, 3), np.float32), "b": np.ones(5, np.float16), "c": np.ones((2, 1, 2))},
              str(path), metadata={"note": "x"})
    tensors = checkpoint.read_tensors(path)
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in load_file(str(path)).items()}


# ============================================================ checkpoints: config.json
CONFIG_EDITS = [
    ("vocab_size", "64"), ("vocab_size", 64.0), ("vocab_size", True), ("vocab_size", [64]), ("vocab_size", {"v": 64}),
    ("vocab_size", -64), ("vocab_size", 0), ("vocab_size", None), ("vocab_size", 10 ** 30), ("n_layer", 1.5),
    ("n_head", "2"), ("n_embd", [8]), ("n_positions", "8"), ("n_ctx", False), ("resid_pdrop", "0.1"),
    ("resid_pdrop", float("nan")), ("resid_pdrop", 1.0), ("resid_pdrop", -0.1), ("resid_pdrop", [0.1]),
    ("embd_pdrop", float("inf")), ("attn_pdrop", {"p": 0}), ("layer_norm_epsilon", float("inf")),
    ("layer_norm_epsilon", 0), ("layer_norm_epsilon", -1e-5), ("layer_norm_epsilon", "1e-5"),
    ("layer_norm_epsilon", True), ("n_inner", 7), ("n_inner", "32"), ("model_type", 5), ("model_type", ["gpt2"]),
    ("activation_function", None), ("activation_function", {"gelu": 1}), ("model_type", "llama"),
]


@pytest.mark.parametrize("key, value", CONFIG_EDITS, ids=[f"{k}={v!r}"[:30] for k, v in CONFIG_EDITS])
def test_every_config_field_is_type_checked(tmp_path, key, value):
    directory = tiny_checkpoint(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    if key == "n_ctx":
        del config["n_positions"]
    (directory / "config.json").write_text(json.dumps(config))
    exc = error_of(lambda: GPT.from_pretrained(directory))
    assert type(exc) is CheckpointError and "config.json" in str(exc) and len(str(exc)) < 400, exc


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000, '{"vocab_size": ' + "9" * 5000 + "}", '{"a": 1, "a": 2}', "\ud800", "",
], ids=["deep", "digits", "duplicate", "surrogate", "empty"])
def test_config_json_that_python_chokes_on_is_a_checkpoint_error(tmp_path, text):
    directory = tiny_checkpoint(tmp_path / "ckpt")
    (directory / "config.json").write_bytes(text.encode("utf-8", "surrogatepass"))
    exc = error_of(lambda: GPT.from_pretrained(directory))
    assert type(exc) is CheckpointError and "config.json" in str(exc)


@pytest.mark.parametrize("key, value", [("vocab_size", 10 ** 12), ("n_layer", 10 ** 6), ("n_positions", 10 ** 9),
                                        ("n_embd", 2 ** 40), ("n_layer", 2)])
def test_sizes_are_compared_with_the_header_before_the_model_is_built(tmp_path, monkeypatch, key, value):
    directory = tiny_checkpoint(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    if key == "n_embd":
        config["n_head"] = 1
    (directory / "config.json").write_text(json.dumps(config))

    def no_allocation(self, *args, **kwargs):
        raise AssertionError("a model was built before the config was compared with the weights file")

    monkeypatch.setattr(GPT, "__init__", no_allocation)
    exc = error_of(lambda: GPT.from_pretrained(directory))
    assert type(exc) is CheckpointError and "model.safetensors" in str(exc), exc


@pytest.mark.parametrize("config", [TINY, GPTConfig(vocab_size=50, block_size=5, n_layer=3, n_head=3, n_embd=12)])
def test_the_shapes_a_config_implies_are_the_models(config):
    from npgpt.io.hf_gpt2 import tensor_shapes

    assert tensor_shapes(config) == {name: p.shape for name, p in GPT(config, init=False).named_parameters()}


def test_a_config_claiming_huge_sizes_is_refused_at_once_under_a_memory_limit(tmp_path):
    """In a subprocess limited to 2 GiB of address space, each such config is refused in well under a second."""
    for name, edit in (("vocab", {"vocab_size": 10 ** 12}), ("layers", {"n_layer": 10 ** 6})):
        directory = tiny_checkpoint(tmp_path / name)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **edit}))
    script = textwrap.dedent(f"""
        import resource, sys, time
        from npgpt.model import GPT
        from npgpt.io.checkpoint import CheckpointError
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        for name in ("vocab", "layers"):
            start = time.perf_counter()
            try:
                GPT.from_pretrained({str(tmp_path)!r} + "/" + name)
            except CheckpointError as exc:
                print(name, round(time.perf_counter() - start, 3), exc)
            else:
                sys.exit(name + " loaded")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["vocab", "layers"], proc.stdout
    assert all(float(line.split()[1]) < 1.0 for line in lines), proc.stdout


assert resource.RLIMIT_AS      # the memory-limited test above relies on it (POSIX)


# ============================================================ checkpoints: weights
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_with_the_tensor_name(tmp_path, value):
    from safetensors.numpy import save_file

    directory = tiny_checkpoint(tmp_path / "ckpt")
    tensors = checkpoint.read_tensors(directory / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.weight"][3, 5] = value
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'transformer.h.0.mlp.c_fc.weight' holds 1 non-finite.*\(3, 5\)"):
        GPT.from_pretrained(directory)
    model = GPT.from_pretrained(directory, allow_non_finite=True)          # the opt-out, to inspect the file
    assert np.isnan(model.h[0].mlp.c_fc.weight.data[3, 5]) == np.isnan(value)


def test_float64_beyond_float32s_range_is_refused(tmp_path):
    from safetensors.numpy import save_file

    directory = tiny_checkpoint(tmp_path / "ckpt")
    tensors = {k: v.astype(np.float64) for k, v in checkpoint.read_tensors(directory / "model.safetensors").items()}
    tensors["transformer.wpe.weight"][0, 0] = 1e300
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'transformer.wpe.weight' holds 1 non-finite"):
        GPT.from_pretrained(directory)


def test_pytorch_bin_is_never_unpickled(tmp_path, monkeypatch):
    import pickle

    directory = tiny_checkpoint(tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(CheckpointError, match="pickle"):
        GPT.from_pretrained(directory)
    with pytest.raises(CheckpointError, match="pickle"):
        GPTClassifier.from_pretrained(directory, num_labels=2)


# ============================================================ the classifier's loader
@pytest.fixture
def classifier_dir(tmp_path):
    return GPTClassifier(TINY, num_labels=3, labels=["a", "b", "c"]).save_pretrained(tmp_path / "clf")


@pytest.mark.parametrize("key, value", [
    ("architectures", "GPT2ForSequenceClassification"), ("architectures", [["GPT2ForSequenceClassification"]]),
    ("num_labels", "3"), ("num_labels", 3.0), ("num_labels", True), ("num_labels", 0), ("num_labels", 10 ** 9),
    ("num_labels", [3]), ("id2label", ["a", "b", "c"]), ("id2label", {"0": 1}), ("npgpt_labels", [1, 2, 3]),
    ("npgpt_labels", "abc"), ("npgpt_labels", ["a", "a", "b"]), ("npgpt_labels", ["a", "b"]), ("pad_token_id", "0"),
    ("pad_token_id", -1), ("pad_token_id", [0]), ("vocab_size", 10 ** 12), ("n_layer", "1"),
])
def test_the_classifier_reads_config_json_through_the_guarded_reader(classifier_dir, monkeypatch, key, value):
    config = json.loads((classifier_dir / "config.json").read_text())
    config[key] = value
    (classifier_dir / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(GPT, "__init__", lambda self, *a, **k: built.append(1) or (_ for _ in ()).throw(
        AssertionError("built before checking")))
    exc = error_of(lambda: GPTClassifier.from_pretrained(classifier_dir))
    assert type(exc) is CheckpointError and str(classifier_dir) in str(exc) and not built, exc


def test_the_classifier_refuses_malformed_json_and_non_finite_weights(classifier_dir):
    from safetensors.numpy import save_file

    (classifier_dir / "config.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="config.json"):
        GPTClassifier.from_pretrained(classifier_dir)
    GPTClassifier(TINY, num_labels=3, labels=["a", "b", "c"]).save_pretrained(classifier_dir)
    tensors = checkpoint.read_tensors(classifier_dir / "model.safetensors")
    tensors["score.weight"][1, 2] = np.nan
    save_file(tensors, str(classifier_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'score.weight' holds 1 non-finite"):
        GPTClassifier.from_pretrained(classifier_dir)
    assert GPTClassifier.from_pretrained(classifier_dir, allow_non_finite=True).labels == ["a", "b", "c"]


# ============================================================ tokenizer files
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXT, 320, show_progress=False)


@pytest.fixture
def tok_dir(tokenizer, tmp_path):
    return tokenizer.save(tmp_path / "tok")


def assert_names(exc, path, line=None):
    assert isinstance(exc, TokenizerFileError), f"{type(exc).__name__}: {exc}"
    where = f"{path}:{line}" if line is not None else str(path)
    assert where in str(exc), f"{exc} does not name {where}"


@pytest.mark.parametrize("vocab", [
    "[1, 2]", '"x"', "null", "{}", "[" * 100_000, '{"a": ' + "1" * 5000 + "}", '{"a": 0, "a": 1}',
    '{"a": "0"}', '{"a": 0.0}', '{"a": true}', '{"a": null}', '{"a": [0]}', '{"a": 1}', '{"a": -1}',
    '{"a": 0, "b": 0}', '{"": 0}',
], ids=["list", "string", "null", "empty", "deep", "digits", "duplicate", "id-str", "id-float", "id-bool",
        "id-null", "id-list", "gap", "negative", "shared-id", "empty-token"])
def test_malformed_vocab_json_names_the_file(tok_dir, vocab):
    (tok_dir / "vocab.json").write_text(vocab)
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "vocab.json")


def test_a_vocabulary_without_all_bytes_is_refused(tok_dir):
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    vocab = {(token_text(b"\xff") + "x" if i == vocab[token_text(b"q")] else t): i for t, i in vocab.items()}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "vocab.json")


def test_bytes_that_are_not_utf8_name_the_file_and_line(tok_dir):
    lines = (tok_dir / "merges.txt").read_bytes().split(b"\n")
    lines[3] = b"\xff\xfe " + lines[3]
    (tok_dir / "merges.txt").write_bytes(b"\n".join(lines))
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "merges.txt")
    assert "line 4" in str(error_of(lambda: Tokenizer.from_pretrained(tok_dir)))
    (tok_dir / "vocab.json").write_bytes(b'{"\xe9": 0}')
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "vocab.json")


@pytest.mark.parametrize("line", ["a b c", "onlyone", "Ġ zzzzz", ENDOFTEXT + " a", "a " + ENDOFTEXT])
def test_a_bad_merge_line_names_the_file_and_line(tok_dir, line):
    lines = (tok_dir / "merges.txt").read_text().splitlines()
    lines.insert(5, line)
    (tok_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "merges.txt", 6)


def test_a_merge_that_makes_a_token_outside_the_vocabulary_names_the_line(tok_dir):
    lines = (tok_dir / "merges.txt").read_text().splitlines()
    lines.insert(2, "q q")                     # both parts exist, "qq" does not
    (tok_dir / "merges.txt").write_text("\n".join(lines) + "\n")
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), tok_dir / "merges.txt", 3)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "shuffled", "the-deleted"])
def test_a_merges_file_that_leaves_tokens_unreachable_is_refused(tokenizer, tok_dir, damage):
    header, *lines = (tok_dir / "merges.txt").read_text().splitlines()
    if damage == "truncated":
        lines = lines[:len(lines) // 2]
    elif damage == "emptied":
        lines = []
    elif damage == "shuffled":         # most orders still reach every token of a small vocabulary: find one that does not
        from npgpt.tokenizer.formats import _unreachable

        ordinary = {t: i for i, t in enumerate(tokenizer._tokens) if i not in tokenizer.special_tokens.values()}
        for seed in range(100):
            order = list(range(len(lines)))
            random.Random(seed).shuffle(order)
            if _unreachable(tokenizer._tokens, [tokenizer.merges[i] for i in order], ordinary):
                break
        lines = [lines[i] for i in order]
    else:                              # the one line that makes " the"
        the = tokenizer.token_to_id("Ġthe")
        rank = MergeTable.of(tokenizer).made.index(the)
        del lines[lines.index(" ".join(tokenizer.id_to_token(i) for i in tokenizer.merges[rank]))]
    (tok_dir / "merges.txt").write_text("\n".join([header, *lines]) + "\n")
    exc = error_of(lambda: Tokenizer.from_pretrained(tok_dir))
    assert_names(exc, tok_dir / "merges.txt")
    assert "never produced by these merges" in str(exc)
    if damage == "the-deleted":
        assert "1 ordinary token(s)" in str(exc) and "'Ġthe'" in str(exc)


def test_gpt2s_vocabulary_with_a_truncated_merges_file_is_refused_not_relabelled(tmp_path):
    """The issue's report: a truncated vocab.bpe made " the" a special token and "To be" unencodable."""
    from npgpt import datasets

    if not datasets.is_cached("gpt2-encoder"):
        pytest.skip("GPT-2's encoder.json is not in the npgpt cache (python -m npgpt.datasets fetch gpt2-encoder)")
    source = datasets.fetch("gpt2-encoder")
    source = source if source.is_dir() else source.parent
    (tmp_path / "encoder.json").write_bytes((source / "encoder.json").read_bytes())
    lines = (source / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    (tmp_path / "vocab.bpe").write_text("\n".join(lines[:-157]) + "\n", encoding="utf-8")
    exc = error_of(lambda: Tokenizer.from_pretrained(tmp_path))
    assert_names(exc, tmp_path / "vocab.bpe")
    assert "157 ordinary token(s)" in str(exc)
    (tmp_path / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    whole = Tokenizer.from_pretrained(tmp_path)
    assert whole.special_tokens == {ENDOFTEXT: 50256} and whole.encode("To be") == [2514, 307]


def test_openai_layout_still_infers_endoftext(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "hf")
    (tmp_path / "openai").mkdir()
    (tmp_path / "openai" / "encoder.json").write_text((tmp_path / "hf" / "vocab.json").read_text())
    (tmp_path / "openai" / "vocab.bpe").write_text((tmp_path / "hf" / "merges.txt").read_text())
    assert Tokenizer.from_pretrained(tmp_path / "openai") == tokenizer


@pytest.mark.parametrize("name, content", [
    ("tokenizer_config.json", "[1]"), ("tokenizer_config.json", "{"), ("tokenizer_config.json", "[" * 100_000),
    ("tokenizer_config.json", '{"eos_token": {"content": 5}}'), ("tokenizer_config.json", '{"eos_token": [1]}'),
    ("tokenizer_config.json", '{"additional_special_tokens": "x"}'),
    ("tokenizer_config.json", '{"additional_special_tokens": [[["x"]]]}'),
    ("tokenizer_config.json", '{"added_tokens_decoder": [1]}'),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"0": "x"}}'),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"0": {"special": true}}}'),
    ("special_tokens_map.json", '"x"'), ("special_tokens_map.json", '{"bos_token": {"a": 1}}'),
    ("special_tokens_map.json", b"\xff"), ("added_tokens.json", '["x"]'), ("added_tokens.json", '{"x": "1"}'),
], ids=lambda value: str(value)[:30])
def test_malformed_special_token_files_name_the_file(tok_dir, name, content):
    path = tok_dir / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_names(error_of(lambda: Tokenizer.from_pretrained(tok_dir)), path)


def test_settings_under_token_keys_are_not_tokens(tokenizer, tok_dir):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True, pad_token=None, model_max_length=1e30)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tok_dir) == tokenizer


def _ranks_file(tokenizer, path, transform=lambda lines: lines):
    import base64

    lines = [f"{base64.b64encode(tokenizer.token_bytes(i)).decode()} {i}"
             for i in range(tokenizer.vocab_size) if i not in tokenizer.special_tokens.values()]
    path.write_text("\n".join(transform(lines)) + "\n")
    return path


def test_from_tiktoken_works_for_any_vocabulary_size(tokenizer, tmp_path):
    path = _ranks_file(tokenizer, tmp_path / "small.tiktoken")
    loaded = Tokenizer.from_tiktoken(path)
    n = tokenizer.vocab_size - 1
    assert loaded.special_tokens == {ENDOFTEXT: n} and loaded.vocab_size == n + 1
    assert loaded.encode(TEXT) == tokenizer.encode(TEXT)
    two = Tokenizer.from_tiktoken(path, special_tokens={"<|pad|>": n + 1, ENDOFTEXT: n})
    assert two.special_tokens == {ENDOFTEXT: n, "<|pad|>": n + 1}


@pytest.mark.parametrize("edit", [
    lambda lines: lines + ["YQ== -1"], lambda lines: lines + ["YQ== 3"], lambda lines: lines[:100] + lines[101:],
    lambda lines: lines + [" 999"], lambda lines: lines + ["= 999"], lambda lines: lines + ["YQ== " + "9" * 5000],
    lambda lines: lines + ["YQ== 1_0"], lambda lines: lines + [lines[300].split()[0] + f" {len(lines)}"],
    lambda lines: lines[1:], lambda lines: [], lambda lines: lines + ["YQ== ٣"],
], ids=["negative", "duplicate-rank", "gap", "empty-token", "bad-base64", "digits", "underscore",
        "duplicate-token", "no-byte-0", "empty", "arabic-digit"])
def test_malformed_tiktoken_files_name_the_file(tokenizer, tmp_path, edit):
    path = _ranks_file(tokenizer, tmp_path / "bad.tiktoken", edit)
    assert_names(error_of(lambda: Tokenizer.from_tiktoken(path)), path)


@pytest.mark.parametrize("specials", [{ENDOFTEXT: 5}, {ENDOFTEXT: 10 ** 6}, {ENDOFTEXT: "319"}, {5: 319},
                                      {"": 319}, {"a": 319, "b": 319}, [ENDOFTEXT]])
def test_from_tiktoken_checks_the_special_token_ids(tokenizer, tmp_path, specials):
    path = _ranks_file(tokenizer, tmp_path / "ok.tiktoken")
    assert_names(error_of(lambda: read_tiktoken(path, specials)), path)


# ============================================================ token data (data_dir: tests/conftest.py)
@pytest.mark.parametrize("key, value", [
    ("dtype", "float32"), ("dtype", 5), ("dtype", None), ("dtype", ["uint16"]), ("dtype", "<u2"), ("vocab_size", "40"),
    ("vocab_size", 40.0), ("vocab_size", True), ("vocab_size", 0), ("vocab_size", 70_000), ("vocab_size", [40]),
    ("train_tokens", "10"), ("train_tokens", -1), ("train_tokens", 3), ("val_tokens", 1.5), ("eot_token_id", 10 ** 6),
    ("eot_token_id", "0"), ("tokenizer", "tok"), ("tokenizer", {"dir": 5}), ("format_version", 99),
    ("format_version", "1"),
])
def test_meta_json_is_checked(data_dir, key, value):
    meta = json.loads((data_dir / "meta.json").read_text())
    meta[key] = value
    (data_dir / "meta.json").write_text(json.dumps(meta))
    exc = error_of(lambda: data.TokenFile(data_dir, "train"))
    assert type(exc) is ValueError and "data" in str(exc) and ("meta.json" in str(exc) or "train.bin" in str(exc)), exc


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"dtype": ' + b"1" * 5000 + b"}", b"[1]", b"\xff{}"],
                         ids=["deep", "digits", "list", "latin1"])
def test_meta_json_that_python_chokes_on_is_a_value_error(data_dir, content):
    (data_dir / "meta.json").write_bytes(content)
    exc = error_of(lambda: data.load_meta(data_dir))
    assert type(exc) is ValueError and "meta.json" in str(exc)


def test_a_dtype_that_does_not_match_the_file_size_is_refused(data_dir):
    meta = json.loads((data_dir / "meta.json").read_text())
    tokens = np.fromfile(data_dir / "train.bin", dtype="<u2")
    tokens.astype("<u4").tofile(data_dir / "train.bin")         # a uint32 file still labelled uint16
    with pytest.raises(ValueError, match=rf"train.bin holds {2 * meta['train_tokens']:,} uint16 tokens"):
        data.TokenFile(data_dir, "train")


def test_an_out_of_range_id_is_named_with_its_file_and_offset_before_training(data_dir, tmp_path, capsys):
    vocab = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    tokens = np.fromfile(data_dir / "train.bin", dtype="<u2")
    tokens[123] = vocab + 7
    tokens.tofile(data_dir / "train.bin")
    with pytest.raises(ValueError, match=rf"train.bin: token 123 \(byte offset 246\) is id {vocab + 7}, outside"):
        data.TokenFile(data_dir, "train")
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--max-steps", "3",
                 *TRAIN_FLAGS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.bin: token 123" in err
    assert not (tmp_path / "run" / "checkpoint").exists()


# ============================================================ the command line
def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_a_full_disk_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(fileio, "atomic_write", full)
    argv = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok")]
    assert main(argv) == 1
    _one_line_error(capsys, "No space left on device", "vocab.json")
    with pytest.raises(OSError, match="No space left"):
        main(["--debug", *argv])
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--overwrite", "--debug"])
    monkeypatch.setenv("NPGPT_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--overwrite"])


def test_a_read_only_run_directory_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(rundir.os, "open", read_only)
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--max-steps", "2",
                 *TRAIN_FLAGS]) == 1
    _one_line_error(capsys, "Read-only file system", str(tmp_path / "run"))


def test_checkpoint_tokenizer_and_settings_errors_are_one_line(tokenizer, tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "model")
    (model / "config.json").write_text('{"vocab_size": "lots"}')
    assert main(["generate", "--model", str(model), "hello"]) == 1
    _one_line_error(capsys, "config.json")
    tok = tokenizer.save(tmp_path / "tok")
    (tok / "merges.txt").write_text("#version: 0.2\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(tok), "--out", str(tmp_path / "d")]) == 1
    _one_line_error(capsys, "merges.txt", "never produced")
    for settings in ('{"lr": "fast"}', '{"n_layer": [1]}', "[1, 2]", "[" * 100_000, '{"max_steps": true}'):
        (tmp_path / "settings.json").write_text(settings)
        assert main(["train", "--config", str(tmp_path / "settings.json"), "--out", str(tmp_path / "r")]) == 1
        _one_line_error(capsys, "settings.json")


# ============================================================ labelled files
def test_a_50_mb_field_is_read(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "word " * 10_000_000
    path.write_text(f"text,label\n\"{long_text}\",pos\nshort,neg\n")
    texts, labels = labelled.read_labelled_file(path)
    assert len(texts[0]) == len(long_text.strip()) and labels == ["pos", "neg"]
    path = tmp_path / "long.tsv"
    path.write_text(f"text\tlabel\n{long_text}\tpos\n")
    assert len(labelled.read_labelled_file(path)[0][0]) == len(long_text.strip())


def test_a_byte_order_mark_is_accepted_and_bad_bytes_name_the_line(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nfine,pos\n".encode())
    assert labelled.read_labelled_file(path) == (["fine"], ["pos"])
    path.write_bytes(b"text,label\nfine,pos\nbad \xe9,neg\n")
    with pytest.raises(ValueError, match=r"bom.csv is not UTF-8 text: line 3"):
        labelled.read_labelled_file(path)


@pytest.mark.parametrize("record, message", [
    ({"text": "a", "label": ["pos"]}, "a JSON array"), ({"text": "a", "label": {"c": 1}}, "a JSON object"),
    ({"text": ["a"], "label": "pos"}, "a JSON array"), ({"text": {"t": "a"}, "label": "pos"}, "a JSON object"),
    ({"text": "a", "label": True}, "the boolean true"), ({"text": "a", "label": False}, "the boolean false"),
    ({"text": True, "label": "pos"}, "the boolean true"), ({"text": "a", "label": 0.5}, "the number 0.5"),
    ({"text": float("nan"), "label": "pos"}, "the number nan"),
])
def test_jsonl_fields_that_are_not_scalars_or_are_booleans_are_refused(tmp_path, record, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "pos"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"data.jsonl, line 2: field '\w+' is {message}"):
        labelled.read_labelled_file(path)


@pytest.mark.parametrize("line", ['{"text": "a", "label": ' + "1" * 5000 + "}", "[" * 100_000], ids=["digits", "deep"])
def test_jsonl_lines_that_python_chokes_on_name_the_line(tmp_path, line):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match="data.jsonl, line 2: not valid JSON"):
        labelled.read_labelled_file(path)


def test_integer_and_string_labels_still_work(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": 7, "label": "neg"}\n')
    assert labelled.read_labelled_file(path) == (["a", "7"], [1, "neg"])


# ============================================================ a tokenizer file that links elsewhere
SECRET_LINE = "root:x:0:0:secret-account:/root:/bin/sh-with-a-long-tail"
SECRET_JSON = '{"api_key": "sk-0123456789abcdefghijklmnopqrstuvwxyz"}'


def _longest_shared_run(message, secret):
    """The longest run of characters of ``secret`` that ``message`` quotes."""
    return max((n for i in range(len(secret)) for n in range(1, len(secret) - i + 1) if secret[i:i + n] in message),
               default=0)


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json",
                                  "added_tokens.json", "ranks.tiktoken"])
@pytest.mark.parametrize("secret", [SECRET_LINE + "\nbin:x:1:1::/:\n", SECRET_JSON + "\n"], ids=["passwd", "json"])
def test_a_tokenizer_file_linked_to_another_file_quotes_a_few_characters_at_most(tok_dir, tokenizer, tmp_path,
                                                                                  name, secret):
    other = tmp_path / "private"
    other.write_text(secret)
    if name == "ranks.tiktoken":
        path, load = tmp_path / name, lambda: Tokenizer.from_tiktoken(tmp_path / name)
    else:
        path, load = tok_dir / name, lambda: Tokenizer.from_pretrained(tok_dir)
    path.unlink(missing_ok=True)
    path.symlink_to(other)
    if secret == SECRET_JSON + "\n" and name in ("special_tokens_map.json", "tokenizer_config.json"):
        load()                         # an object without *_token keys names no special token: nothing to refuse
        return
    exc = error_of(load)
    assert isinstance(exc, TokenizerFileError) and str(path) in str(exc), exc
    assert _longest_shared_run(str(exc), secret.splitlines()[0]) <= 16, exc
