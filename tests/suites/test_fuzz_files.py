"""Fuzzing the loaders: valid files, mutated at random, must load or fail with the one named error.

Each property takes a small valid artefact (a checkpoint, a classifier, a tokenizer directory,
a tiktoken ranks file, a prepared data directory, a labelled file), applies a random list of
mutations (byte flips, truncations, edits of the JSON header or config, merges-file damage,
meta.json edits) and asserts that loading either succeeds with a usable result or raises only
the error type that loader promises, naming the file. Nothing else may come out: no
TypeError, IndexError, RecursionError, UnicodeDecodeError, SafetensorError, MemoryError.

Memory: instead of an address-space limit per example, every GPT built while loading is
checked to hold no more parameters than its weights file has bytes, which is what "sizes are
compared with the header before allocating" guarantees (a config claiming 10**12 tokens is
refused before the model exists); tests/suites/test_hardening.py also loads such configs in a
subprocess under RLIMIT_AS.

Bounded for CI: a fixed number of examples per property (``fuzz(n)`` below; 590 in all), no
deadline. ``NPGPT_FUZZ_SCALE=20 pytest tests/suites/test_fuzz_files.py`` runs twenty times as many.
"""

import base64
import contextlib
import functools
import json
import os
import pathlib
import random
import re
import struct
import subprocess
import sys
import tempfile
from unittest import mock

import hostile_files
import numpy as np
import pytest
from char_tokenizer import prepare_two_documents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgpt.finetuning import labelled
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.io.checkpoint import CheckpointError
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import ENDOFTEXT, Tokenizer, TokenizerFileError
from npgpt.tokenizer.bpe import token_bytes
from npgpt.tokenizer.formats import special_names
from npgpt.training import data

pytestmark = pytest.mark.slow

TINY = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8)
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8
SAMPLE = "To be, or not to be: the question is whether the mind suffers. Zebra 42 ünïcödé!"


def fuzz(examples):
    examples = int(examples * float(os.environ.get("NPGPT_FUZZ_SCALE", "1")))
    return settings(max_examples=examples, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ strategies
NASTY_INTS = st.sampled_from([0, 1, -1, 2, 7, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 6, 10 ** 9, 10 ** 12,
                              10 ** 30, 10 ** 400])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), NASTY_INTS, st.floats(), st.text(max_size=6),
                    st.sampled_from(["F32", "F16", "BF16", "F64", "U8", "I64", "BOOL", "", "gpt2", "gelu_new",
                                     ENDOFTEXT, "GPT2ForSequenceClassification", "uint16", "uint32"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=10)
# JSON texts that json.dumps never writes but a file may hold
RAW = st.sampled_from(["[" * 20_000 + "]" * 20_000, '{"a":' * 5000 + "1" + "}" * 5000, "9" * 5000, "-" + "9" * 4400,
                       "NaN", "Infinity", "-Infinity", "1e999", "-0", '"\\ud800"', '"\\u0000"', "[]", "{}", '""'])
FLIPS = st.lists(st.tuples(st.one_of(st.integers(0, 400), st.integers(0, 2 ** 20)), st.integers(0, 255)),
                 max_size=6)


def flip(raw, flips):
    raw = bytearray(raw)
    for position, value in flips:
        if raw:
            raw[position % len(raw)] = value
    return bytes(raw)


def json_with_raw(value, raw_values):
    """json.dumps(value) with each placeholder string "@@RAWn@@" replaced by raw JSON text."""
    text = json.dumps(value)
    for i, raw in enumerate(raw_values):
        text = text.replace(json.dumps(f"@@RAW{i}@@"), raw)
    return text


def json_edits(keys):
    """Edits of a JSON object: set a key (one of ``keys`` or any) to a value or raw text, delete, perturb."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=5))
    return st.lists(st.one_of(
        st.tuples(st.just("set"), key, VALUES),
        st.tuples(st.just("raw"), key, RAW),
        st.tuples(st.just("del"), key, st.none()),
        st.tuples(st.just("perturb"), key, st.integers(-3, 3)),
    ), min_size=1, max_size=4)


def apply_json_edits(obj, edits):
    """Apply ``json_edits`` to a dict; returns the JSON text (raw values spliced in)."""
    raws = []
    for op, key, value in edits:
        if op == "set":
            obj[key] = value
        elif op == "raw":
            obj[key] = f"@@RAW{len(raws)}@@"
            raws.append(value)
        elif op == "del":
            obj.pop(key, None)
        elif op == "perturb" and key in obj:
            obj[key] = _perturb(obj[key], value)
    return json_with_raw(obj, raws)


def _perturb(value, delta):
    """Nudge the first integer inside ``value`` by ``delta`` (near-valid edits find off-by-one checks)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + delta
    if isinstance(value, list) and value:
        return [_perturb(value[0], delta), *value[1:]]
    if isinstance(value, dict) and value:
        first = next(iter(value))
        return {**value, first: _perturb(value[first], delta)}
    return value


# ------------------------------------------------------------------ the valid artefacts
# Built once, as bytes, by cached functions rather than fixtures: hypothesis prints every
# argument of a failing example, and a fixture's megabyte of bytes would bury the mutation.
def _files(write):
    with tempfile.TemporaryDirectory() as tmp:
        directory = write(pathlib.Path(tmp) / "artefact")
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@functools.cache
def base_checkpoint():
    return _files(GPT(TINY, seed=1).save_pretrained)


@functools.cache
def base_classifier():
    return _files(GPTClassifier(TINY, num_labels=3, labels=["a", "b", "c"]).save_pretrained)


@functools.cache
def base_tokenizer():
    tokenizer = Tokenizer.train(TEXT, 320, show_progress=False)
    ranks = "".join(f"{base64.b64encode(tokenizer.token_bytes(i)).decode()} {i}\n"
                    for i in range(tokenizer.vocab_size) if i not in tokenizer.special_tokens.values())
    return _files(tokenizer.save), ranks.encode()


@functools.cache
def base_data():
    def write(out):
        prepare_two_documents(TEXT, out)
        return out
    return _files(write)


# ------------------------------------------------------------------ checkpoints


HEADER_FIELDS = ["dtype", "shape", "data_offsets"]
HEADER_EDITS = st.lists(st.one_of(
    st.tuples(st.just("field"), st.integers(0, 100), st.sampled_from(HEADER_FIELDS + ["extra"]), VALUES),
    st.tuples(st.just("raw"), st.integers(0, 100), st.sampled_from(HEADER_FIELDS), RAW),
    st.tuples(st.just("perturb"), st.integers(0, 100), st.sampled_from(HEADER_FIELDS), st.integers(-9, 9)),
    st.tuples(st.just("delete"), st.integers(0, 100), st.sampled_from(HEADER_FIELDS + ["entry"]), st.none()),
    st.tuples(st.just("rename"), st.integers(0, 100), st.text(max_size=30), st.none()),
    st.tuples(st.just("whole"), st.just(0), st.just(""), VALUES),
    st.tuples(st.just("metadata"), st.just(0), st.just(""), VALUES),
    st.tuples(st.just("duplicate"), st.integers(0, 100), st.just(""), st.none()),
), max_size=4)
FILE_EDITS = st.fixed_dictionaries({
    "header": HEADER_EDITS,
    "length_delta": st.one_of(st.just(0), st.integers(-20, 20), st.sampled_from([2 ** 63, 2 ** 64 - 1, 10 ** 9])),
    "truncate": st.one_of(st.none(), st.integers(0, 10_000)),
    "append": st.binary(max_size=8),
    "flips": FLIPS,
})


def mutate_safetensors(raw, edits):
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    raws, duplicate = [], None
    for op, index, field, value in edits["header"]:
        if op == "whole":
            header = value
            continue
        if not isinstance(header, dict):
            continue
        name = names[index % len(names)] if names else None
        entry = header.get(name) if name is not None else None
        if op == "metadata":
            header["__metadata__"] = value
        elif op == "rename" and name in header:
            header[field] = header.pop(name)
        elif op == "duplicate" and name in header:
            duplicate = name
        elif op == "delete" and field == "entry":
            header.pop(name, None)
        elif isinstance(entry, dict):
            if op == "field":
                entry[field] = value
            elif op == "raw":
                entry[field] = f"@@RAW{len(raws)}@@"
                raws.append(value)
            elif op == "perturb" and field in entry:
                entry[field] = _perturb(entry[field], value)
            elif op == "delete":
                entry.pop(field, None)
    text = json_with_raw(header, raws)
    if duplicate is not None and text.endswith("}"):       # a key given twice, as raw JSON text
        text = text[:-1] + f", {json.dumps(duplicate)}: {{}}}}"
    head = text.encode("utf-8", "surrogatepass")
    out = struct.pack("<Q", (len(head) + edits["length_delta"]) % 2 ** 64) + head + body + edits["append"]
    if edits["truncate"] is not None:
        out = out[:edits["truncate"]]
    return flip(out, edits["flips"])


@contextlib.contextmanager
def models_fit_their_files(weights):
    """Fail if a GPT is built with more parameters than the weights file has bytes."""
    original = GPT.__init__

    def checked(self, config=None, *args, **kwargs):
        size = weights.stat().st_size if weights.exists() else 0
        assert config is None or config.num_parameters() <= size, \
            f"a model of {config.num_parameters():,} parameters was built for a file of {size:,} bytes"
        original(self, config, *args, **kwargs)

    with mock.patch.object(GPT, "__init__", checked):
        yield


def write_files(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        (directory / name).write_bytes(raw)
    return directory


CONFIG_KEYS = ["vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner", "resid_pdrop",
               "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "model_type", "activation_function"]
CONFIG_EDITS = st.fixed_dictionaries({
    "edits": json_edits(CONFIG_KEYS),
    "sizes": st.lists(st.tuples(st.sampled_from(CONFIG_KEYS[:6]), NASTY_INTS), max_size=2),
    "flips": st.one_of(st.just([]), FLIPS),
    "truncate": st.one_of(st.none(), st.integers(0, 2000)),
})


def mutate_config(raw, edits):
    config = json.loads(raw)
    for key, value in edits["sizes"]:
        config[key] = value
    out = apply_json_edits(config, edits["edits"]).encode("utf-8", "surrogatepass")
    if edits["truncate"] is not None:
        out = out[:edits["truncate"]]
    return flip(out, edits["flips"])


def load_and_check(directory, loader, allowed=CheckpointError):
    """``loader(directory)``: a result, or an ``allowed`` error that names the directory's file."""
    with models_fit_their_files(directory / "model.safetensors"):
        try:
            return loader(directory)
        except allowed as exc:
            assert str(directory) in str(exc), f"{type(exc).__name__} does not name the file: {exc}"
            assert len(str(exc)) < 2000, f"an unreadably long message: {str(exc)[:300]}..."
            return None


@fuzz(100)
@given(edits=FILE_EDITS)
def test_mutated_weights_files_load_or_raise_checkpoint_error(edits):
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_files(pathlib.Path(tmp) / "ckpt", {
            "config.json": base_checkpoint()["config.json"],
            "model.safetensors": mutate_safetensors(base_checkpoint()["model.safetensors"], edits)})
        model = load_and_check(directory, GPT.from_pretrained)
        if model is not None:
            assert isinstance(model, GPT) and np.isfinite(model(np.zeros((1, 2), np.int64)).numpy()).all()


@fuzz(100)
@given(edits=CONFIG_EDITS)
def test_mutated_configs_load_or_raise_checkpoint_error(edits):
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_files(pathlib.Path(tmp) / "ckpt", {
            "config.json": mutate_config(base_checkpoint()["config.json"], edits),
            "model.safetensors": base_checkpoint()["model.safetensors"]})
        model = load_and_check(directory, GPT.from_pretrained)
        if model is not None:
            assert model.config.vocab_size == TINY.vocab_size and model.config.n_layer == TINY.n_layer


CLASSIFIER_KEYS = ["architectures", "num_labels", "id2label", "label2id", "npgpt_labels", "pad_token_id",
                   "problem_type", *CONFIG_KEYS[:6]]


@fuzz(60)
@given(edits=json_edits(CLASSIFIER_KEYS), weights=st.one_of(st.none(), FILE_EDITS))
def test_mutated_classifiers_load_or_raise_a_named_error(edits, weights):
    config = json.loads(base_classifier()["config.json"])
    raw_weights = base_classifier()["model.safetensors"]
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_files(pathlib.Path(tmp) / "clf", {
            "config.json": apply_json_edits(config, edits).encode("utf-8", "surrogatepass"),
            "model.safetensors": raw_weights if weights is None else mutate_safetensors(raw_weights, weights)})
        # a config that no longer names the classifier is a language model, and then the
        # number of labels must be given: a ValueError naming the directory too
        model = load_and_check(directory, GPTClassifier.from_pretrained, allowed=ValueError)
        if model is not None:
            assert len(model.labels) == model.num_classes and all(isinstance(n, str) for n in model.labels)


# ------------------------------------------------------------------ tokenizers
LINE_EDITS = st.lists(st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10 ** 4), st.none()),
    st.tuples(st.just("swap"), st.integers(0, 10 ** 4), st.integers(0, 10 ** 4)),
    st.tuples(st.just("duplicate"), st.integers(0, 10 ** 4), st.none()),
    st.tuples(st.just("replace"), st.integers(0, 10 ** 4), st.text(max_size=12)),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 4), st.text(max_size=12)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 4), st.none()),
    st.tuples(st.just("shuffle"), st.integers(0, 2 ** 32), st.none()),
), max_size=3)


def edit_lines(raw, edits):
    lines = raw.decode("utf-8").split("\n")
    for op, i, value in edits:
        k = i % max(len(lines), 1)
        if op == "delete" and lines:
            del lines[k]
        elif op == "swap" and lines:
            j = value % len(lines)
            lines[k], lines[j] = lines[j], lines[k]
        elif op == "duplicate" and lines:
            lines.insert(k, lines[k])
        elif op == "replace" and lines:
            lines[k] = value
        elif op == "insert":
            lines.insert(k, value)
        elif op == "truncate":
            lines = lines[:k]
        elif op == "shuffle":
            random.Random(i).shuffle(lines)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


TOKEN_KEYS = ["eos_token", "bos_token", "unk_token", "pad_token", "additional_special_tokens", "added_tokens_decoder",
              "add_bos_token"]
TOKENIZER_EDITS = st.fixed_dictionaries({
    "vocab": st.one_of(st.just([]), json_edits(["Ġthe", "the", "Ġ", "a", ENDOFTEXT, "Ġto", "<|x|>"])),
    "merges": LINE_EDITS,
    "config": st.one_of(st.just([]), json_edits(TOKEN_KEYS)),
    "special_map": st.one_of(st.just([]), json_edits(TOKEN_KEYS[:5])),
    "flips": st.dictionaries(st.sampled_from(["vocab.json", "merges.txt", "tokenizer_config.json"]), FLIPS,
                             max_size=1),
    "openai_layout": st.booleans(),
})


def mutate_tokenizer(files, edits):
    out = dict(files)
    for name, key in (("vocab.json", "vocab"), ("tokenizer_config.json", "config"),
                      ("special_tokens_map.json", "special_map")):
        if edits[key]:
            out[name] = apply_json_edits(json.loads(files[name]), edits[key]).encode("utf-8", "surrogatepass")
    out["merges.txt"] = edit_lines(files["merges.txt"], edits["merges"])
    for name, flips in edits["flips"].items():
        out[name] = flip(out[name], flips)
    if edits["openai_layout"]:          # OpenAI's two files, no json of special tokens
        out = {"encoder.json": out["vocab.json"], "vocab.bpe": out["merges.txt"]}
    return out


def _looks_special(text):
    try:
        token_bytes(text)
    except KeyError:
        return True               # not a byte-level spelling: an added token
    return re.fullmatch(r"<\|[^\s]+\|>", text) is not None


def check_tokenizer(tok, directory):
    """A loaded tokenizer encodes text and gives it back, and relabelled no ordinary token as special."""
    ids = tok.encode(SAMPLE, disallowed_special=())
    assert tok.decode(ids) == SAMPLE
    named = set(special_names(directory)) if directory is not None else set()
    relabelled = [s for s in tok.special_tokens if s not in named and not _looks_special(s)]
    assert not relabelled, f"ordinary tokens were made special: {relabelled}"


@fuzz(100)
@given(edits=TOKENIZER_EDITS)
def test_mutated_tokenizer_directories_load_or_raise_tokenizer_file_error(edits):
    files, _ = base_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_files(pathlib.Path(tmp) / "tok", mutate_tokenizer(files, edits))
        try:
            tok = Tokenizer.from_pretrained(directory)
        except TokenizerFileError as exc:
            assert str(directory) in str(exc), exc
            return
        check_tokenizer(tok, directory)


@fuzz(60)
@given(edits=LINE_EDITS, ranks=st.lists(st.tuples(st.integers(0, 10 ** 4), st.one_of(st.integers(), NASTY_INTS,
                                                                                      st.text(max_size=4))),
                                        max_size=2),
       flips=st.one_of(st.just([]), FLIPS))
def test_mutated_tiktoken_files_load_or_raise_tokenizer_file_error(edits, ranks, flips):
    _, raw = base_tokenizer()
    lines = raw.decode().split("\n")
    for i, rank in ranks:
        k = i % (len(lines) - 1)
        lines[k] = f"{lines[k].split(' ')[0]} {rank}"
    mutated = flip(edit_lines("\n".join(lines).encode(), edits), flips)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "ranks.tiktoken"
        path.write_bytes(mutated)
        try:
            tok = Tokenizer.from_tiktoken(path)
        except TokenizerFileError as exc:
            assert str(path) in str(exc), exc
            return
        check_tokenizer(tok, None)
        assert tok.special_tokens == {ENDOFTEXT: tok.vocab_size - 1}


# ------------------------------------------------------------------ token data
META_KEYS = ["dtype", "vocab_size", "train_tokens", "val_tokens", "eot_token_id", "tokenizer", "format_version"]


@fuzz(60)
@given(edits=json_edits(META_KEYS), flips=st.one_of(st.just([]), FLIPS),
       tokens=st.lists(st.tuples(st.integers(0, 10 ** 4), st.integers(0, 2 ** 16 - 1)), max_size=2),
       cut=st.one_of(st.none(), st.integers(0, 9)))
def test_mutated_data_directories_load_or_raise_a_named_value_error(edits, flips, tokens, cut):
    files = dict(base_data())
    files["meta.json"] = flip(apply_json_edits(json.loads(files["meta.json"]), edits).encode("utf-8",
                                                                                         "surrogatepass"), flips)
    train = np.frombuffer(files["train.bin"], dtype="<u2").copy()
    for position, value in tokens:
        train[position % len(train)] = value
    files["train.bin"] = train.tobytes()[:len(train) * 2 - cut if cut is not None else None]
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_files(pathlib.Path(tmp) / "data", files)
        for split in ("train", "val"):
            try:
                tokens_file = data.TokenFile(directory, split)
            except ValueError as exc:
                assert str(directory) in str(exc), exc
                continue
            vocab = tokens_file.meta["vocab_size"]
            assert len(tokens_file) > 0 and int(np.asarray(tokens_file.tokens).max()) < vocab


# ------------------------------------------------------------------ labelled files
LABELLED_RECORDS = st.lists(st.one_of(
    st.fixed_dictionaries({"text": VALUES, "label": VALUES}),
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=10), "label": st.sampled_from(["a", "b", 0, 1])}),
    VALUES,
), min_size=1, max_size=6)


@fuzz(60)
@given(records=LABELLED_RECORDS, raw_lines=st.lists(st.one_of(st.text(max_size=20), RAW), max_size=2),
       bom=st.booleans())
def test_mutated_jsonl_files_load_or_raise_a_named_error(records, raw_lines, bom):
    lines = [json.dumps(r) for r in records] + raw_lines
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "data.jsonl"
        path.write_bytes(("\ufeff" if bom else "").encode() + "\n".join(lines).encode("utf-8", "surrogatepass"))
        try:
            texts, labels = labelled.read_labelled_file(path)
        except (ValueError, KeyError) as exc:
            assert str(path) in str(exc), exc
            return
        assert all(isinstance(t, str) and t for t in texts)
        assert all(isinstance(y, (str, int)) and not isinstance(y, bool) for y in labels)


@fuzz(60)
@given(body=st.text(max_size=200), fmt=st.sampled_from(["csv", "tsv"]), long_field=st.booleans())
def test_mutated_csv_files_load_or_raise_a_named_error(body, fmt, long_field):
    sep = "," if fmt == "csv" else "\t"
    long_text = "x" * 200_000 if long_field else "y"
    content = f"text{sep}label\n{long_text}{sep}a\n{body}"
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / f"data.{fmt}"
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
        try:
            texts, labels = labelled.read_labelled_file(path)
        except (ValueError, KeyError) as exc:
            assert str(path) in str(exc), exc
            return
        assert texts[0] == long_text and all(isinstance(t, str) and t for t in texts)


# ------------------------------------------------------------------ special and oversized files
def test_every_reader_refuses_special_and_oversized_files_at_once(tmp_path):
    """Each file npgpt reads (tests/hostile_files.py lists them), replaced by a link to /dev/zero, a FIFO
    or a 50 GiB sparse file, is refused within seconds with the reader's own error naming the file.

    In a subprocess under a 3 GiB address-space limit: a reader that reads /dev/zero whole would
    otherwise take the test run's memory, and one that opens a FIFO would wait for ever.
    """
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).parents[1] / "hostile_files.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    cases = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(cases) == 3 * len(hostile_files.READERS) - len(hostile_files.UNBOUNDED), proc.stdout
    bad = [c for c in cases if not c["expected"] or c["file"] not in c["message"] or c["seconds"] > 5]
    assert not bad, "\n".join(f"{c['reader']} / {c['kind']}: {c['error']} after {c['seconds']:.1f} s: "
                              f"{c['message'][-200:]}" for c in bad)
