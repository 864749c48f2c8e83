"""Checkpoints: HF GPT-2 layout, atomic saves, clear errors for broken files, parity with transformers."""

import json
import struct

import numpy as np
import pytest

from npgpt.autograd import no_grad
from npgpt.io import checkpoint, hub
from npgpt.io.checkpoint import CheckpointError
from npgpt.model import GPT, GPTConfig

SMALL = dict(vocab_size=100, block_size=64, n_layer=2, n_head=2, n_embd=32)


def small(seed=0):
    return GPT(GPTConfig(**SMALL), seed=seed).eval()


def ids(B=2, T=10, seed=0):
    return np.random.default_rng(seed).integers(0, 100, (B, T))


def logits(model, x=None):
    with no_grad():
        return model(ids() if x is None else x).numpy()


def write_raw_safetensors(path, entries, cut=0):
    """A safetensors file written byte by byte: ``{name: (dtype, shape, raw bytes)}``."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    data = struct.pack("<Q", len(head)) + head + b"".join(blobs)
    path.write_bytes(data[:len(data) - cut])


def saved(tmp_path, model=None, name="ckpt"):
    return (model or small()).save_pretrained(tmp_path / name)


# ------------------------------------------------------------- round trip
def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = small(seed=3)
    directory = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = GPT.from_pretrained(directory)
    assert loaded.config == model.config and not loaded.training
    np.testing.assert_array_equal(logits(loaded), logits(model))


def test_files_use_hugging_face_names_and_config_fields(tmp_path):
    directory = saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new" and config["n_positions"] == config["n_ctx"] == 64
    assert config["tie_word_embeddings"] is True and config["n_inner"] is None
    assert config["bos_token_id"] is None      # 50256 only exists in GPT-2's 50,257-token vocabulary
    assert checkpoint.hf_config(GPTConfig())["eos_token_id"] == 50256
    header, _ = checkpoint.read_header(directory / "model.safetensors")
    names = set(header) - {"__metadata__"}
    assert "transformer.h.1.attn.c_attn.weight" in names and "lm_head.weight" not in names
    assert len(names) == 2 + 2 * 12 + 2 and header["transformer.wte.weight"]["dtype"] == "F32"


def test_resave_keeps_other_files_in_the_directory(tmp_path):
    directory = saved(tmp_path)
    (directory / "vocab.json").write_text("{}")
    saved(tmp_path, small(seed=1))
    assert (directory / "vocab.json").read_text() == "{}"
    np.testing.assert_array_equal(logits(GPT.from_pretrained(directory)), logits(small(seed=1)))


def test_a_failure_mid_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    directory = saved(tmp_path, small(seed=1))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def crash(tensors, path):
        path.write_bytes(b"half a file")        # something written, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        saved(tmp_path, small(seed=2))
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]           # no temporary left behind
    np.testing.assert_array_equal(logits(GPT.from_pretrained(directory)), logits(small(seed=1)))


def test_save_into_a_file_path_fails(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        small().save_pretrained(tmp_path / "file")


# ------------------------------------------------------------ name lookup
def test_from_pretrained_looks_in_the_shipped_models(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "PRETRAINED_DIR", tmp_path)
    saved(tmp_path, small(seed=5), name="tiny-shipped")
    np.testing.assert_array_equal(logits(GPT.from_pretrained("tiny-shipped")), logits(small(seed=5)))
    expected = r"no checkpoint 'nope': tried nope, .*nope \(shipped models: \['tiny-shipped'\]\)"
    with pytest.raises(FileNotFoundError, match=expected):
        GPT.from_pretrained("nope")


# ------------------------------------------------------- broken checkpoints
def test_missing_files(tmp_path):
    directory = saved(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        GPT.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        GPT.from_pretrained(directory)


def test_pytorch_bin_only_is_refused_without_unpickling(tmp_path):
    directory = saved(tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04 not even a valid pickle")
    with pytest.raises(CheckpointError, match="safetensors only.*pickle"):
        GPT.from_pretrained(directory)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}', "lacks vocab_size"),
    ('{"vocab_size": 100, "n_embd": 30, "n_layer": 2, "n_head": 4, "n_positions": 64}', "divisible"),
    ('{"vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, '
     '"activation_function": "relu"}', "relu"),
])
def test_bad_config_json(tmp_path, text, message):
    directory = saved(tmp_path)
    (directory / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        GPT.from_pretrained(directory)


def test_truncated_file_names_the_tensor_that_does_not_fit(tmp_path):
    directory = saved(tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    header, start = checkpoint.read_header(path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=f"truncated: tensor '{last}' needs bytes"):
        GPT.from_pretrained(directory)
    path.write_bytes(data[:100])           # cut inside the header
    with pytest.raises(CheckpointError, match="header claims"):
        GPT.from_pretrained(directory)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        GPT.from_pretrained(directory)


def test_corrupt_header_is_reported(tmp_path):
    directory = saved(tmp_path)
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("!")                      # the JSON header's opening brace
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt header"):
        GPT.from_pretrained(directory)


def _rewrite(directory, change):
    """Re-write the weights file after ``change(dict of name -> float32 array)``."""
    from safetensors.numpy import save_file

    path = directory / "model.safetensors"
    tensors = checkpoint.read_tensors(path)
    change(tensors)
    save_file(tensors, str(path))


def test_missing_wrong_shape_and_unexpected_tensors_are_named(tmp_path):
    directory = saved(tmp_path)
    _rewrite(directory, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match="tensor 'h.1.mlp.c_fc.bias' is missing"):
        GPT.from_pretrained(directory)
    directory = saved(tmp_path)
    _rewrite(directory, lambda t: t.update({"transformer.h.0.attn.c_attn.weight": np.zeros((96, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'h.0.attn.c_attn.weight' has shape \(96, 32\).*\(32, 96\)"):
        GPT.from_pretrained(directory)
    directory = saved(tmp_path)
    _rewrite(directory, lambda t: t.update({"transformer.h.0.attn.rotary": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['h.0.attn.rotary'\]"):
        GPT.from_pretrained(directory)


def test_unprefixed_names_legacy_buffers_and_a_tied_lm_head_are_accepted(tmp_path):
    model = small(seed=2)
    directory = saved(tmp_path, model)

    def legacy(t):
        for name in list(t):
            t[name[len("transformer."):]] = t.pop(name)
        t["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        t["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
        t["lm_head.weight"] = t["wte.weight"].copy()

    _rewrite(directory, legacy)
    np.testing.assert_array_equal(logits(GPT.from_pretrained(directory)), logits(model))


def test_an_untied_lm_head_is_refused(tmp_path):
    directory = saved(tmp_path)
    _rewrite(directory, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        GPT.from_pretrained(directory)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_checkpoints_are_upcast_to_float32(tmp_path, dtype):
    model = small(seed=4)
    directory = saved(tmp_path, model)
    expected = {}
    entries = {}
    for name, array in checkpoint.read_tensors(directory / "model.safetensors").items():
        if dtype == "F16":
            half = array.astype(np.float16)
            expected[name] = half.astype(np.float32)
            raw = half.astype("<f2").tobytes()
        else:   # bfloat16 = the top 16 bits of a float32
            top = (array.view(np.uint32) >> 16).astype("<u2")
            expected[name] = (top.astype(np.uint32) << 16).view(np.float32)
            raw = top.tobytes()
        entries[name] = (dtype, array.shape, raw)
    write_raw_safetensors(directory / "model.safetensors", entries)
    loaded = GPT.from_pretrained(directory)
    for name, p in loaded.named_parameters():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.data, expected["transformer." + name], err_msg=name)
    np.testing.assert_allclose(logits(loaded), logits(model), atol=0.05)


def test_raw_writer_detects_byte_count_mismatch(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw_safetensors(path, {"a": ("F32", (3,), b"\0" * 8)})
    with pytest.raises(CheckpointError, match="tensor 'a' of shape \\(3,\\) and dtype F32 should take 12 bytes"):
        checkpoint.read_header(path)


# ------------------------------------------------------ parity with transformers
@pytest.fixture(scope="module")
def torch_and_hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return torch, transformers


def _hf_greedy(torch, hf, x, n):
    """Greedy decoding with transformers, written out so no generation config interferes."""
    out = torch.from_numpy(x)
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
    return out.numpy()


def test_parity_loading_a_transformers_checkpoint(tmp_path, torch_and_hf):
    torch, transformers = torch_and_hf
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100,
                                                              n_positions=64)).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = GPT.from_pretrained(tmp_path / "hf")
    x = ids()
    with torch.no_grad():
        expected = hf(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(logits(ours, x), expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ours.generate(x, 12), _hf_greedy(torch, hf, x, 12))


def test_parity_transformers_loading_our_checkpoint(tmp_path, torch_and_hf):
    torch, transformers = torch_and_hf
    model = small(seed=7)
    model.save_pretrained(tmp_path / "ours")
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = ids(seed=1)
    with torch.no_grad():
        got = hf(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(got, logits(model, x), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(_hf_greedy(torch, hf, x, 12), model.generate(x, 12))
