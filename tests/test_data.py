"""Token files and batches: prepare -> train.bin / val.bin / meta.json -> memmap -> (x, y) windows."""

import json
import os

import numpy as np
import pytest
import regex
from char_tokenizer import EOT, CharTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt import backend
from npgpt.training import data

TEXT_A = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
TEXT_B = "All:\nSpeak, speak.\n"


def _files(tmp_path, *texts):
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"doc{i}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def split_each_document(documents, fraction):
    """The expected split: each document's head is training data, its last `fraction` validation."""
    train, val = [], []
    for ids in documents:
        n_val = int(len(ids) * fraction)
        train += ids[:len(ids) - n_val]
        val += ids[len(ids) - n_val:]
    return train, val


def both_splits(out):
    return list(data.TokenFile(out, "train").tokens), list(data.TokenFile(out, "val").tokens)


def test_prepare_writes_the_token_stream_with_separators(tmp_path):
    tok = CharTokenizer(TEXT_A + TEXT_B)
    meta = data.prepare(_files(tmp_path, TEXT_A, TEXT_B), tok, tmp_path / "out", val_fraction=0.2, progress=False)
    documents = [tok.encode(TEXT_A) + [tok.eot_id], tok.encode(TEXT_B) + [tok.eot_id]]
    train = data.load_tokens(tmp_path / "out" / "train.bin")
    val = data.load_tokens(tmp_path / "out" / "val.bin")
    assert train.dtype == np.uint16 and isinstance(train, np.memmap)
    # every document gives its tail to validation, so each source is represented in both splits
    assert (list(train), list(val)) == split_each_document(documents, 0.2)
    assert len(val) == meta["val_tokens"] and meta["train_tokens"] == len(train)
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["vocab_size"] == tok.vocab_size and meta["eot_token_id"] == tok.eot_id and meta["documents"] == 2
    assert (tmp_path / "out" / "tokenizer" / "chars.json").is_file()          # saved for training / generation
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]
    with pytest.raises(ValueError):                                           # read-only map
        train[0] = 1


def test_marker_strings_split_documents(tmp_path):
    tok = CharTokenizer(TEXT_A + TEXT_B)
    data.prepare(_files(tmp_path, TEXT_A + EOT + "\n" + EOT + TEXT_B), tok, tmp_path / "out", progress=False)
    documents = [tok.encode(TEXT_A) + [tok.eot_id], tok.encode(TEXT_B) + [tok.eot_id]]   # the empty one dropped
    assert both_splits(tmp_path / "out") == split_each_document(documents, 0.1)
    assert data.split_documents("a<|endoftext|> <|endoftext|>b") == ["a", "b"]


def test_wide_vocabularies_are_stored_as_uint32(tmp_path):
    assert data.token_dtype(65_536) == np.uint16 and data.token_dtype(65_537) == np.uint32
    tok = CharTokenizer(TEXT_A, offset=70_000)
    meta = data.prepare(_files(tmp_path, TEXT_A), tok, tmp_path / "out", progress=False)
    assert meta["dtype"] == "uint32"
    tokens = data.TokenFile(tmp_path / "out", "train").tokens
    assert tokens.dtype == np.uint32 and int(tokens[0]) == tok.encode(TEXT_A)[0] > 65_535


def test_prepare_errors_name_the_problem(tmp_path):
    tok = CharTokenizer(TEXT_A)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        data.prepare([tmp_path / "missing.txt"], tok, tmp_path / "out")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        data.prepare([empty], tok, tmp_path / "out")
    with pytest.raises(ValueError, match="no input files"):
        data.prepare([], tok, tmp_path / "out")
    with pytest.raises(ValueError, match="val_fraction"):
        data.prepare(_files(tmp_path, TEXT_A), tok, tmp_path / "out", val_fraction=1.0)

    class NoSpecial(CharTokenizer):
        def encode(self, text, allowed_special=(), disallowed_special="all"):
            return [self.index[c] for c in text]

    with pytest.raises(ValueError, match="endoftext"):
        data.prepare(_files(tmp_path, TEXT_A), NoSpecial(TEXT_A + "<|>"), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="npgpt prepare"):
        data.load_meta(tmp_path / "nowhere")


def test_a_failed_prepare_leaves_the_previous_data_intact(tmp_path):
    tok = CharTokenizer(TEXT_A + TEXT_B)
    out = tmp_path / "out"
    data.prepare(_files(tmp_path, TEXT_A), tok, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    class Broken(CharTokenizer):
        def encode(self, text, allowed_special=(), disallowed_special="all"):
            if text == TEXT_B:
                raise RuntimeError("tokenizer crashed")
            return super().encode(text, allowed_special)

    with pytest.raises(RuntimeError, match="crashed"):
        data.prepare(_files(tmp_path, TEXT_A, TEXT_B), Broken(TEXT_A + TEXT_B), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before   # no temp files either


def test_batches_are_shifted_windows_of_the_stream():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = data.BatchSampler(tokens, batch_size=4, block_size=16, seed=0)
    x, y = sampler.next()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)                        # targets are the next tokens (eq:cross-entropy-loss)
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(16))     # contiguous windows
    assert x.min() >= 0 and y.max() <= 999


def test_every_valid_window_start_can_be_drawn():
    tokens = np.arange(10, dtype=np.uint16)
    sampler = data.BatchSampler(tokens, batch_size=64, block_size=4, seed=1)
    starts = set()
    for _ in range(10):
        x, _ = sampler.next()
        starts |= set(x[:, 0].tolist())
    assert starts == set(range(10 - 4))            # 0 .. N - T - 1, both ends included


def test_sampler_state_resumes_exactly_through_json():
    tokens = np.random.default_rng(0).integers(0, 500, 5000).astype(np.uint16)
    a = data.BatchSampler(tokens, 3, 8, seed=42)
    for _ in range(5):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))
    b = data.BatchSampler(tokens, 3, 8, seed=0)
    b.load_state_dict(state)
    for _ in range(3):
        xa, ya = a.next()
        xb, yb = b.next()
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert b.batches == a.batches == 8
    with pytest.raises(ValueError, match="tokens"):
        data.BatchSampler(tokens[:100], 3, 8).load_state_dict(state)
    again = data.BatchSampler(tokens, 3, 8, seed=42)
    np.testing.assert_array_equal(again.next()[0], data.BatchSampler(tokens, 3, 8, seed=42).next()[0])


def test_too_short_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than block_size"):
        data.BatchSampler(np.arange(16, dtype=np.uint16), 2, 16)
    data.BatchSampler(np.arange(17, dtype=np.uint16), 2, 16)          # exactly T + 1 is enough
    bad = tmp_path / "odd.bin"
    bad.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="whole number"):
        data.load_tokens(bad, dtype="uint16")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.load_tokens(tmp_path / "empty.bin", dtype="uint16")


def test_prepare_with_a_trained_bpe_tokenizer_round_trips(tmp_path):
    tokenizer = pytest.importorskip("npgpt.tokenizer")
    tok = tokenizer.Tokenizer.train([TEXT_A * 5, TEXT_B * 5], 300, show_progress=False)
    tricky = "say <|endoftext|> aloud"        # a marker inside a file splits it into two documents
    meta = data.prepare(_files(tmp_path, TEXT_A, TEXT_B + tricky), tok, tmp_path / "out", progress=False)
    documents = [tok.encode(text) + [meta["eot_token_id"]] for text in (TEXT_A, TEXT_B + "say ", " aloud")]
    train, val = both_splits(tmp_path / "out")
    assert (train, val) == split_each_document(documents, 0.1)
    assert tok.decode(train + val).count(EOT) == 3
    assert meta["eot_token_id"] == tok.encode(EOT, allowed_special={EOT})[0]
    assert tokenizer.Tokenizer.from_pretrained(tmp_path / "out" / "tokenizer") == tok


def _read_splits(out):
    return (out / "train.bin").read_bytes(), (out / "val.bin").read_bytes()


@pytest.mark.parametrize("bpe", [False, True], ids=["char-tokenizer", "npgpt-bpe"])
def test_any_number_of_workers_writes_the_same_files(tmp_path, monkeypatch, bpe):
    """Runs of documents encoded by a pool come back in order: the files equal one process's."""
    texts = [TEXT_A * (i % 3 + 1) + f"document {i}\n" + TEXT_B for i in range(12)]
    if bpe:
        from npgpt.tokenizer import Tokenizer
        tok = Tokenizer.train(texts, 300, show_progress=False)
    else:
        tok = CharTokenizer("".join(texts))
    monkeypatch.setattr(data, "_MIN_TASK_BYTES", 64)       # many small runs, so the pool has work to share
    monkeypatch.setattr(data, "_TASK_BYTES", 64)
    metas = {}
    for workers in (1, 2, 3):
        metas[workers] = data.prepare_documents(texts, tok, tmp_path / str(workers), progress=False, workers=workers)
    documents = [list(tok.encode(t, allowed_special=set(), disallowed_special=())) + [metas[1]["eot_token_id"]]
                 for t in texts]
    assert both_splits(tmp_path / "1") == split_each_document(documents, 0.1)
    assert _read_splits(tmp_path / "2") == _read_splits(tmp_path / "3") == _read_splits(tmp_path / "1")
    for meta in metas.values():
        meta.pop("tokenize_seconds")
    assert metas[1] == metas[2] == metas[3]


def test_tiny_documents_take_the_streams_tail_for_validation(tmp_path, monkeypatch):
    """When no document is long enough to give a token, the stream's last tokens are cut from
    train.bin (already written) into val.bin."""
    texts = ["a", "b", "ab", "ba", "a", "b"]          # 2-3 tokens each: int(n * 0.1) == 0
    tok = CharTokenizer("ab")
    monkeypatch.setattr(data, "_MIN_TASK_BYTES", 2)
    monkeypatch.setattr(data, "_TASK_BYTES", 2)
    meta = data.prepare_documents(texts, tok, tmp_path / "out", val_fraction=0.25, progress=False, workers=2)
    stream = [i for t in texts for i in tok.encode(t) + [tok.eot_id]]
    n_val = round(len(stream) * 0.25)
    assert both_splits(tmp_path / "out") == (stream[:-n_val], stream[-n_val:])
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(stream) - n_val, n_val)


def test_workers_must_be_a_positive_integer(tmp_path, capsys):
    tok = CharTokenizer(TEXT_A)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            data.prepare_documents([TEXT_A], tok, tmp_path / "out", workers=bad)
    from npgpt.apps.cli import main
    assert main(["prepare", "--input", str(_files(tmp_path, TEXT_A)[0]), "--tokenizer", str(tmp_path), "--out",
                 str(tmp_path / "cli"), "--workers", "0"]) == 2
    assert "--workers: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert backend.default_workers() >= 1


def test_a_worker_that_fails_leaves_no_files(tmp_path, monkeypatch):
    class Broken(CharTokenizer):
        def encode(self, text, allowed_special=(), disallowed_special="all"):
            if text == TEXT_B:
                raise RuntimeError("tokenizer crashed")
            return super().encode(text, allowed_special)

    monkeypatch.setattr(data, "_MIN_TASK_BYTES", 16)
    monkeypatch.setattr(data, "_TASK_BYTES", 16)
    with pytest.raises(RuntimeError, match="crashed"):
        data.prepare_documents([TEXT_A, TEXT_A, TEXT_B, TEXT_A], Broken(TEXT_A + TEXT_B), tmp_path / "out",
                               progress=False, workers=2)
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ the tokenizer beside the ids
OTHER_TEXT = TEXT_B * 20 + "Speak louder, all of you! We proceed no further tonight, citizens.\n" * 9   # same size
TRAIN_FLAGS = dict(n_layer=1, n_head=2, n_embd=8, block_size=8, batch_size=2, max_steps=1, eval_iters=1)


def _bpe(text, vocab_size=290):
    from npgpt.tokenizer import Tokenizer

    return Tokenizer.train(text, vocab_size, show_progress=False)


def _train(data_dir, out, log=None):
    from npgpt.training.train import train

    return train(data_dir=str(data_dir), out_dir=str(out), log=log or (lambda line: None), **TRAIN_FLAGS)


@pytest.fixture
def bpe_data(tmp_path):
    out = tmp_path / "data"
    data.prepare(_files(tmp_path, TEXT_A * 20, TEXT_B * 20), _bpe(TEXT_A * 20 + TEXT_B * 20), out, progress=False,
                 workers=1)
    return out


def test_meta_json_records_the_tokenizers_digest_and_train_verifies_it(bpe_data, tmp_path):
    meta = data.load_meta(bpe_data)
    assert meta["tokenizer"]["dir"] == "tokenizer"
    assert meta["tokenizer"]["sha256"] == data.tokenizer_digest(bpe_data / "tokenizer")
    assert data.tokenizer_dir(bpe_data) == bpe_data / "tokenizer"
    _train(bpe_data, tmp_path / "run")
    # Another tokenizer of the same size saved over it: the ids no longer mean what they meant.
    _bpe(OTHER_TEXT).save(bpe_data / "tokenizer")
    with pytest.raises(ValueError, match=r"tokenizer is not the one that made the token ids .* run `npgpt prepare`"):
        data.tokenizer_dir(bpe_data)
    with pytest.raises(ValueError, match="not the one that made the token ids"):
        _train(bpe_data, tmp_path / "run2")


def test_train_tokenizer_must_be_the_one_that_made_the_ids(bpe_data, tmp_path):
    """`train --tokenizer DIR` stores DIR with the checkpoints: it must be the data's tokenizer, in any layout."""
    from npgpt.training.train import train

    _bpe(OTHER_TEXT).save(tmp_path / "other")
    with pytest.raises(ValueError, match="is not the tokenizer that made the token ids"):
        train(data_dir=str(bpe_data), out_dir=str(tmp_path / "run"), tokenizer_dir=str(tmp_path / "other"),
              log=lambda line: None, **TRAIN_FLAGS)
    same = tmp_path / "same"
    same.mkdir()
    for name in ("vocab.json", "merges.txt"):            # the same tokenizer, without its json extras
        (same / name).write_bytes((bpe_data / "tokenizer" / name).read_bytes())
    (same / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOT}))
    train(data_dir=str(bpe_data), out_dir=str(tmp_path / "run"), tokenizer_dir=str(same), log=lambda line: None,
          **TRAIN_FLAGS)


def test_a_deleted_tokenizer_or_one_outside_the_data_directory_is_refused(bpe_data, tmp_path):
    import shutil

    meta_path = bpe_data / "meta.json"
    meta = json.loads(meta_path.read_text())
    shutil.copytree(bpe_data / "tokenizer", tmp_path / "elsewhere")
    for outside in ("../elsewhere", str(tmp_path / "elsewhere"), "tokenizer/../../elsewhere"):
        meta_path.write_text(json.dumps({**meta, "tokenizer": {**meta["tokenizer"], "dir": outside}}))
        with pytest.raises(ValueError, match="tokenizer.dir must name a directory inside the data directory"):
            _train(bpe_data, tmp_path / "run")
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(bpe_data / "tokenizer")
    (bpe_data / "tokenizer").symlink_to(tmp_path / "elsewhere")              # a link out of the data directory
    with pytest.raises(ValueError, match="is a link out of the data directory"):
        _train(bpe_data, tmp_path / "run")
    (bpe_data / "tokenizer").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer .* was deleted"):
        _train(bpe_data, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in ("meta.json", "train.bin", "val.bin")}


@pytest.mark.parametrize("where, when", [("Tokenizer.save", "after"), ("_TempFile.commit", "before"),
                                         ("_TempFile.commit", "after"), ("replace_directory", "before"),
                                         ("replace_directory", "after"), ("atomic_write", "before")])
def test_a_killed_prepare_overwrite_reads_as_not_prepared(bpe_data, tmp_path, monkeypatch, where, when):
    """`prepare --overwrite` killed at each step that writes: the directory is the old data complete, or
    reads as not prepared, never the old ids beside the new tokenizer (nor the new ids beside the old)."""
    from npgpt.io import fileio
    from npgpt.tokenizer import Tokenizer

    old_tok, old = Tokenizer.from_pretrained(bpe_data / "tokenizer"), _snapshot(bpe_data)
    new_tok = _bpe(OTHER_TEXT)
    owner, name = {"Tokenizer.save": (Tokenizer, "save"), "_TempFile.commit": (data._TempFile, "commit"),
                   "replace_directory": (fileio, "replace_directory"), "atomic_write": (fileio, "atomic_write")}[where]
    real = getattr(owner, name)

    def killed(*args, **kwargs):
        if when == "after":
            real(*args, **kwargs)
        raise KeyboardInterrupt            # the kill, at this point of the run

    monkeypatch.setattr(owner, name, killed)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(_files(tmp_path, TEXT_B * 30), new_tok, bpe_data, progress=False, workers=1)
    monkeypatch.undo()
    if (bpe_data / "meta.json").exists():          # then it is the old data, whole and consistent
        assert _snapshot(bpe_data) == old
        assert data.tokenizer_dir(bpe_data) == bpe_data / "tokenizer"
        assert Tokenizer.from_pretrained(bpe_data / "tokenizer") == old_tok
        _train(bpe_data, tmp_path / "run")
    else:
        with pytest.raises(FileNotFoundError, match="meta.json is missing.*preparation did not finish"):
            data.load_meta(bpe_data)
        with pytest.raises(FileNotFoundError, match="meta.json is missing"):
            _train(bpe_data, tmp_path / "run")
    data.prepare(_files(tmp_path, TEXT_B * 30), new_tok, bpe_data, progress=False, workers=1)    # the rerun
    assert Tokenizer.from_pretrained(data.tokenizer_dir(bpe_data)) == new_tok
    assert not [p.name for p in bpe_data.iterdir() if p.name.startswith(".") and p.name != ".lock"]   # no debris


def test_a_data_directory_from_before_the_digest_still_trains_with_a_note(bpe_data, tmp_path):
    meta = json.loads((bpe_data / "meta.json").read_text())
    del meta["tokenizer"]["sha256"]
    (bpe_data / "meta.json").write_text(json.dumps(meta))
    lines = []
    _train(bpe_data, tmp_path / "run", log=lines.append)
    assert any("records no digest of its tokenizer" in line for line in lines), lines
    assert (tmp_path / "run" / "checkpoint" / "vocab.json").is_file()


# ------------------------------------------------------------------ long documents in pieces
WHITE_AND_TEXT = st.sampled_from(list("ab Z09'sdtlmvre\t\n\r\x0b\x0c\x1c!?.,") + ["  ", "é", "\xa0", "\u3000", "中",
                                                                                 "😀", "\u0301", "٣", "\x85", " 's",
                                                                                 "\r\n", "<|", "|>"])


@pytest.fixture(scope="module")
def small_bpe():
    return _bpe(TEXT_A * 20 + TEXT_B * 20 + "Let us kill him, and we'll have corn at our own price.\n" * 10, 300)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(WHITE_AND_TEXT, max_size=60).map("".join) | st.text(), piece=st.integers(1, 12),
       keep=st.integers(0, 5))
def test_pieces_cut_at_safe_places_encode_to_the_ids_of_the_whole(small_bpe, text, piece, keep):
    """A long document is encoded in pieces cut between a non-space and a space character: GPT-2's pre-tokens
    (docs/tokenizer.md, "Pre-tokenization") of the pieces are those of the whole, so the ids are too."""
    from npgpt.tokenizer import GPT2_PATTERN

    pieces, rest = data._cut_pieces(text, piece, keep=keep)
    parts = [*pieces, rest]
    assert "".join(parts) == text and len(rest) >= min(keep, len(text))
    assert all(len(p) >= piece for p in pieces)
    assert [w for p in parts for w in regex.findall(GPT2_PATTERN, p)] == regex.findall(GPT2_PATTERN, text)
    assert [i for p in parts for i in small_bpe.encode_ordinary(p)] == small_bpe.encode_ordinary(text)


def test_one_long_document_is_encoded_in_pieces_by_every_worker_with_the_same_ids(tmp_path, monkeypatch, small_bpe):
    """A single file that is one document used to be one task (one worker, and its whole token list in
    memory); now it is cut into pieces that the workers share, and the files are the bytes of the whole."""
    text = "\r\n".join(f"{TEXT_A}{i} {TEXT_B * (i % 4)}" for i in range(300)) + "  \n"
    path = tmp_path / "one.txt"
    path.write_bytes(text.encode("utf-8"))
    whole = small_bpe.encode_ordinary(text.replace("\r\n", "\n")) + [small_bpe.special_tokens[EOT]]
    expected = split_each_document([whole], 0.1)
    monkeypatch.setattr(data, "_MIN_TASK_BYTES", 500)
    monkeypatch.setattr(data, "_TASK_BYTES", 500)
    tasks = []
    real_tasks = data._tasks
    monkeypatch.setattr(data, "_tasks", lambda *a: (tasks.append(t) or t for t in real_tasks(*a)))
    for workers in (1, 2, 3):
        tasks.clear()
        meta = data.prepare([path], small_bpe, tmp_path / str(workers), progress=False, workers=workers)
        assert both_splits(tmp_path / str(workers)) == expected
        assert meta["documents"] == 1 and meta["train_tokens"] + meta["val_tokens"] == len(whole)
        assert len(tasks) > 10 and all(kind == "piece" for kind, _, _ in tasks)
    assert _read_splits(tmp_path / "1") == _read_splits(tmp_path / "2") == _read_splits(tmp_path / "3")


def test_documents_and_markers_split_across_reads_give_the_ids_of_whole_files(tmp_path, monkeypatch, small_bpe):
    """Files are read in chunks: a marker, a CRLF or a character cut by a chunk's end changes nothing."""
    texts = [TEXT_A * 30 + EOT + "  \n" + EOT + TEXT_B * 3 + EOT, "é" * 50 + "\r\n" + TEXT_B * 40, TEXT_A * 5]
    paths = _files(tmp_path, *texts)
    monkeypatch.setattr(data, "_MIN_TASK_BYTES", 64)
    monkeypatch.setattr(data, "_TASK_BYTES", 64)
    expected = None
    for read_chars in (1, 2, 7, 13, 1 << 20):
        monkeypatch.setattr(data, "_READ_CHARS", read_chars)
        meta = data.prepare(paths, small_bpe, tmp_path / f"r{read_chars}", progress=False, workers=1)
        got = both_splits(tmp_path / f"r{read_chars}")
        if expected is None:
            docs = [d for t in texts for d in data.split_documents(t.replace("\r\n", "\n"))]
            expected = split_each_document([small_bpe.encode_ordinary(d) + [meta["eot_token_id"]] for d in docs], 0.1)
            assert meta["documents"] == len(docs) == 4
        assert got == expected, read_chars


def test_a_byte_that_is_not_utf8_is_named_with_its_line_and_offset(tmp_path, monkeypatch, small_bpe):
    path = tmp_path / "bad.txt"
    path.write_bytes((("x" * 100 + "\n") * 30 + "é" * 5).encode() + b"\xff tail")
    monkeypatch.setattr(data, "_READ_CHARS", 64)
    with pytest.raises(ValueError, match=r"prepare: .*bad.txt is not UTF-8 text \(line 31, byte 3,040: invalid start"):
        data.prepare([path], small_bpe, tmp_path / "out", progress=False, workers=1)
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.slow
def test_prepare_of_one_large_file_peaks_below_three_times_its_size(tmp_path):
    """Memory (issue 27: one 101 MB file peaked at 1.56 GB, 15x): in a fresh process, the peak resident
    memory that `prepare` adds for a 20 MB single-document file stays under 3x the file (on one worker; a
    forked worker shares the parent's pages). It was 15x: the document was encoded in one piece."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import random, resource, sys
        from npgpt.tokenizer import Tokenizer
        from npgpt.training import data
        rng = random.Random(0)
        words = [w.strip(".,:") for w in ({TEXT_A * 3 + TEXT_B!r}).split()] + ["citizen", "corn", "price"]
        lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(260_000))
        path = {str(tmp_path / "big.txt")!r}
        with open(path, "w") as f:
            f.write("\\n".join(lines))
        tok = Tokenizer.train(open(path).read(200_000), 400, show_progress=False)
        def status(key):            # kB, from /proc/self/status
            return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
        open("/proc/self/clear_refs", "w").write("5")     # the peak (VmHWM) restarts from now
        before = status("VmRSS:")
        data.prepare([path], tok, {str(tmp_path / "out")!r}, progress=False, workers=1)
        peak = status("VmHWM:")
        import os
        print(os.path.getsize(path) / 1024, before, peak)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    size_kb, before_kb, peak_kb = map(float, proc.stdout.split())
    assert size_kb > 10_000
    assert peak_kb - before_kb < 3 * size_kb, f"prepare added {(peak_kb - before_kb) / size_kb:.2f}x the file"
    print(f"prepare added {(peak_kb - before_kb) / size_kb:.2f}x the file")


@pytest.mark.parametrize("edit,named", [({"files": None}, "'files'"), ({"files": {"train": "../train.bin"}}, "'files'"),
                                        ({"files": {"train": "/etc/passwd"}}, "'files'"),
                                        ({"header_bytes": -4}, "'header_bytes'"), ({"header_bytes": "8"}, "'header_bytes'")])
def test_token_file_names_and_header_in_meta_json_are_checked(tmp_path, edit, named):
    """meta.json's llm.c fields name files of the data directory only, and a header of whole bytes: a
    null, a path outside it, or a negative header is a ValueError naming the field (the fuzz test found the null)."""
    tok = CharTokenizer(TEXT_A + TEXT_B)
    data.prepare(_files(tmp_path, TEXT_A, TEXT_B), tok, tmp_path / "out", val_fraction=0.2, progress=False)
    meta_path = tmp_path / "out" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **edit}))
    with pytest.raises(ValueError, match=named):
        data.TokenFile(tmp_path / "out", "train")
