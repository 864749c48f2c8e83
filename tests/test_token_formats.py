"""nanoGPT's and llm.c's token files, read as they are (npgpt.io.token_formats) and trained on by `npgpt train`."""

import pickle

import numpy as np
import pytest

from npgpt.io import token_formats
from npgpt.training import data
from npgpt.training.train import TrainConfig, train

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


def nanogpt_char_dir(tmp_path, text=TEXT):
    """What nanoGPT's data/shakespeare_char/prepare.py writes: sorted characters, 90/10 split, meta.pkl."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    ids[:cut].tofile(tmp_path / "train.bin")
    ids[cut:].tofile(tmp_path / "val.bin")
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return ids, cut, chars


def llmc_file(path, ids, magic=token_formats.LLMC_MAGIC, version=1, count=None):
    """llm.c's layout: 256 int32 (magic, version, count, zeros), then uint16 ids."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(ids) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(ids, dtype="<u2").tobytes())


def test_nanogpt_char_directory_reads_back_its_ids_and_vocabulary(tmp_path):
    ids, cut, chars = nanogpt_char_dir(tmp_path)
    got = token_formats.read_nanogpt_dir(tmp_path)
    assert got.vocab_size == len(chars) and got.format == "nanogpt"
    np.testing.assert_array_equal(got.train, ids[:cut])
    np.testing.assert_array_equal(got.val, ids[cut:])
    assert "".join(got.itos[int(i)] for i in got.val[:20]) == TEXT[cut:cut + 20]


def test_nanogpt_directory_without_meta_pkl_holds_gpt2_ids(tmp_path):
    np.array([464, 3797, 50256], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([13], dtype=np.uint16).tofile(tmp_path / "val.bin")
    got = token_formats.read_nanogpt_dir(tmp_path)
    assert got.vocab_size == 50257 and got.itos is None and list(got.train) == [464, 3797, 50256]


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("payload", [
    Boom(),                                                          # a call: what makes pickle unsafe
    {"vocab_size": 65, "itos": {0: Boom()}},                         # ... hidden inside
    {"vocab_size": 65, "extra": 1.5},                                # a float: not nanoGPT's meta
    {"vocab_size": 65, "itos": [1, 2]},                              # a list
    {"vocab_size": "65"},
    {"vocab_size": 70000},                                           # beyond uint16 ids
    {"vocab_size": True},
    {"vocab_size": 3, "itos": {5: "x"}},                             # an id outside the vocabulary
    [65],
])
def test_meta_pkl_is_read_without_running_code_and_checked(tmp_path, payload, capsys):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="meta.pkl"):
        token_formats.read_nanogpt_meta(path)
    assert "must never run" not in capsys.readouterr().out


def test_truncated_meta_pkl_is_a_clear_error(tmp_path):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"vocab_size": 65})[:-3])
    with pytest.raises(ValueError, match="not a nanoGPT meta.pkl"):
        token_formats.read_nanogpt_meta(path)


def test_llmc_file_is_read_after_its_header(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) * 50
    llmc_file(tmp_path / "tiny_val.bin", ids)
    got = token_formats.read_llmc_tokens(tmp_path / "tiny_val.bin")
    assert got.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(got, ids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(magic=20240801), "magic number"),
    (dict(version=2), "version 2"),
    (dict(count=999), "header says 999 tokens but it holds 1,000"),
])
def test_llmc_header_is_checked(tmp_path, kwargs, message):
    llmc_file(tmp_path / "x_train.bin", np.zeros(1000, np.uint16), **kwargs)
    with pytest.raises(ValueError, match=message):
        token_formats.read_llmc_tokens(tmp_path / "x_train.bin")


def test_short_llmc_file_is_refused(tmp_path):
    (tmp_path / "x_train.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="shorter than llm.c's 1024-byte header"):
        token_formats.read_llmc_header(tmp_path / "x_train.bin")


def test_llmc_directory_finds_one_file_per_split_and_refuses_shards(tmp_path):
    llmc_file(tmp_path / "tiny_shakespeare_train.bin", [1, 2, 3])
    llmc_file(tmp_path / "tiny_shakespeare_val.bin", [4, 5])
    files = token_formats.llmc_files(tmp_path)
    assert {k: p.name for k, p in files.items()} == {"train": "tiny_shakespeare_train.bin",
                                                     "val": "tiny_shakespeare_val.bin"}
    llmc_file(tmp_path / "tiny_shakespeare_train_2.bin", [1])
    with pytest.raises(ValueError, match="2 llm.c train shards"):
        token_formats.llmc_files(tmp_path)


def test_data_pipeline_reads_both_layouts_through_token_file(tmp_path):
    (tmp_path / "nano").mkdir()
    ids, cut, chars = nanogpt_char_dir(tmp_path / "nano")
    meta = data.load_meta(tmp_path / "nano")
    assert meta["vocab_size"] == len(chars) and meta["source_format"] == "nanogpt"
    np.testing.assert_array_equal(data.TokenFile(tmp_path / "nano", "val").tokens, ids[cut:])
    (tmp_path / "llmc").mkdir()
    llmc_file(tmp_path / "llmc" / "t_train.bin", [7, 8, 9, 10])
    llmc_file(tmp_path / "llmc" / "t_val.bin", [11, 12])
    split = data.TokenFile(tmp_path / "llmc", "train")
    assert split.path.name == "t_train.bin" and list(split.tokens) == [7, 8, 9, 10]
    assert data.load_meta(tmp_path / "llmc")["vocab_size"] == 50257


def test_an_id_beyond_meta_pkl_vocabulary_is_named(tmp_path):
    nanogpt_char_dir(tmp_path)
    np.array([0, 1, 999], dtype=np.uint16).tofile(tmp_path / "val.bin")
    with pytest.raises(ValueError, match="id 999, outside the vocabulary"):
        data.TokenFile(tmp_path, "val")


def test_npgpt_train_trains_on_a_nanogpt_directory(tmp_path):
    (tmp_path / "data").mkdir()
    nanogpt_char_dir(tmp_path / "data")
    config = TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), n_layer=1, n_head=2,
                         n_embd=16, block_size=16, batch_size=4, max_steps=30, eval_interval=30, eval_iters=2,
                         warmup_steps=2, lr=3e-3, min_lr=3e-4, log_interval=30)
    trainer, summary = train(config, log=lambda line: None)
    assert trainer.model.config.vocab_size == len(set(TEXT))
    assert summary["val_loss"] < np.log(len(set(TEXT)))          # it learned something about the text


def test_a_half_prepared_npgpt_directory_is_not_taken_for_nanogpts(tmp_path):
    # `npgpt prepare` killed before its meta.json: token files beside its tokenizer, which nanoGPT never writes
    nanogpt_char_dir(tmp_path)
    (tmp_path / "meta.pkl").unlink()
    assert token_formats.is_nanogpt_dir(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    assert not token_formats.is_nanogpt_dir(tmp_path) and token_formats.foreign_meta(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        data.load_meta(tmp_path)
