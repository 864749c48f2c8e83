"""Hub repo ids: GPT / GPTClassifier / Tokenizer.from_pretrained("org/name", revision=...), offline.

No test reaches the network. Each builds a Hugging Face Hub cache itself under a temporary
HF_HOME, laid out as huggingface_hub lays it out (hub/models--org--name/snapshots/<commit>/...
and refs/<branch or tag>), with HF_HUB_OFFLINE=1: a tiny random GPT-2 saved by transformers,
and GPT-2's tokenizer files from the project's pinned data (npgpt.datasets). npgpt's logits
must equal transformers' loading the same id from the same cache. Also here: sharded
checkpoints (model-0000x-of-0000y.safetensors + model.safetensors.index.json), local or from
the Hub, and the checks on their index.
"""

import ast
import hashlib
import json
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest

from npgpt import datasets
from npgpt.autograd import no_grad
from npgpt.finetuning.classifier import GPTClassifier
from npgpt.io import checkpoint, hub
from npgpt.io.checkpoint import CheckpointError
from npgpt.model import GPT
from npgpt.tokenizer import Tokenizer

REPO = "org/tiny-gpt2"
MAIN = hashlib.sha1(b"main").hexdigest()       # commits are 40 hex digits
V1 = hashlib.sha1(b"v1").hexdigest()
IDS = np.random.default_rng(0).integers(0, 50257, (2, 12))


def commit_of(name):
    return hashlib.sha1(name.encode()).hexdigest()


# ------------------------------------------------------------------ building a Hub cache
def transformers_model(seed, directory, **save):
    """A tiny random GPT-2 (GPT-2's vocabulary size, so GPT-2's tokenizer fits it) saved by transformers."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True, **save)
    return pathlib.Path(directory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{kind: directory} of models saved by transformers: two versions, and a sharded one."""
    pytest.importorskip("huggingface_hub")
    root = tmp_path_factory.mktemp("saved")
    sharded = transformers_model(2, root / "sharded", max_shard_size="100KB")
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) >= 2 and not (sharded / "model.safetensors").exists()
    return {"main": transformers_model(0, root / "main"), "v1": transformers_model(1, root / "v1"), "sharded": sharded}


@pytest.fixture(scope="module")
def gpt2_files():
    """GPT-2's vocab.json and merges.txt: OpenAI's encoder.json and vocab.bpe, pinned in npgpt.datasets."""
    try:
        directory = datasets.fetch("gpt2-encoder")
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"GPT-2's tokenizer files cannot be fetched here: {e}")
    return {"vocab.json": directory / "encoder.json", "merges.txt": directory / "vocab.bpe"}


def add_snapshot(hf_home, repo_id, commit, files, refs=("main",)):
    """Put ``files`` ({name in the repo: source path or bytes}) into the Hub cache as ``repo_id`` at ``commit``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        if isinstance(source, bytes):
            (snapshot / name).write_bytes(source)
        else:
            shutil.copy(source, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def files_of(directory):
    return {p.name: p for p in pathlib.Path(directory).iterdir() if p.is_file()}


@pytest.fixture
def hf_home(tmp_path, monkeypatch, saved):
    """An offline Hub cache holding REPO: refs/main -> MAIN (seed 0), refs/v1 -> V1 (seed 1)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_snapshot(home, REPO, MAIN, files_of(saved["main"]))
    add_snapshot(home, REPO, V1, files_of(saved["v1"]), refs=("v1",))
    return home


def npgpt_logits(model):
    with no_grad():
        return model(IDS).numpy()


def transformers_logits(repo_id, home, **kwargs):
    """transformers' logits for ``repo_id``, loaded from the same cache, never from the network."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model = transformers.GPT2LMHeadModel.from_pretrained(repo_id, cache_dir=str(home / "hub"), local_files_only=True,
                                                         **kwargs).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


# ------------------------------------------------------------------ models from the cache
def test_a_hub_id_loads_from_the_cache_offline_and_equals_transformers(hf_home):
    model = GPT.from_pretrained(REPO)
    np.testing.assert_allclose(npgpt_logits(model), transformers_logits(REPO, hf_home), atol=1e-4, rtol=0)


def test_revision_picks_the_snapshot(hf_home):
    main, v1 = npgpt_logits(GPT.from_pretrained(REPO)), npgpt_logits(GPT.from_pretrained(REPO, revision="v1"))
    assert not np.allclose(main, v1, atol=1e-3)                       # the two versions differ
    np.testing.assert_allclose(v1, transformers_logits(REPO, hf_home, revision="v1"), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(npgpt_logits(GPT.from_pretrained(REPO, revision=V1)), v1)    # a commit
    np.testing.assert_array_equal(npgpt_logits(GPT.from_pretrained(REPO, revision="main")), main)
    with pytest.raises(FileNotFoundError, match=r"revision 'v2' is not in the Hub cache .*HF_HUB_OFFLINE is set"):
        GPT.from_pretrained(REPO, revision="v2")


def test_gpt2_and_openai_community_gpt2_go_to_the_hub(hf_home, saved):
    for repo_id in ("gpt2", "openai-community/gpt2"):
        add_snapshot(hf_home, repo_id, commit_of(repo_id), files_of(saved["v1"]))
        np.testing.assert_allclose(npgpt_logits(GPT.from_pretrained(repo_id)), transformers_logits(repo_id, hf_home),
                                   atol=1e-4, rtol=0)


def test_a_local_directory_then_a_shipped_model_come_before_the_hub(hf_home, saved, tmp_path, monkeypatch):
    hub_main = npgpt_logits(GPT.from_pretrained(REPO))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(saved["v1"], tmp_path / REPO)                    # ./org/tiny-gpt2 on disk
    local = npgpt_logits(GPT.from_pretrained(REPO))
    np.testing.assert_array_equal(local, npgpt_logits(GPT.from_pretrained(saved["v1"])))
    assert not np.allclose(local, hub_main, atol=1e-3)
    with pytest.raises(ValueError, match="revision='v1' names a version of a Hub repo, but org/tiny-gpt2 is a local"):
        GPT.from_pretrained(REPO, revision="v1")

    shipped = tmp_path / "shipped"
    shutil.copytree(saved["v1"], shipped / "tiny")
    monkeypatch.setattr(hub, "PRETRAINED_DIR", shipped)
    add_snapshot(hf_home, "tiny", commit_of("tiny"), files_of(saved["main"]))
    np.testing.assert_array_equal(npgpt_logits(GPT.from_pretrained("tiny")), local)


def test_hf_home_and_offline_are_read_at_each_call(hf_home, saved, tmp_path, monkeypatch):
    """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported; npgpt passes today's values on."""
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("offline, yet the Hub was asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", no_network)
    other = tmp_path / "other-hf"
    add_snapshot(other, REPO, V1, files_of(saved["v1"]))              # the same id, the other version
    first = npgpt_logits(GPT.from_pretrained(REPO))
    monkeypatch.setenv("HF_HOME", str(other))
    second = npgpt_logits(GPT.from_pretrained(REPO))
    np.testing.assert_array_equal(second, npgpt_logits(GPT.from_pretrained(saved["v1"])))
    assert not np.allclose(first, second, atol=1e-3)
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))         # HF_HUB_CACHE wins over HF_HOME
    np.testing.assert_array_equal(npgpt_logits(GPT.from_pretrained(REPO)), first)
    with pytest.raises(FileNotFoundError, match=r"'org/absent' is not in the Hub cache .*HF_HUB_OFFLINE is set"):
        GPT.from_pretrained("org/absent")


def test_only_the_needed_files_are_downloaded(tmp_path, monkeypatch, saved):
    """Online, npgpt asks for config.json and safetensors (then the shards the index names), never a .bin."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    snapshot, asked = tmp_path / "snap", []

    def fake_download(repo_id, *, revision=None, allow_patterns=None, cache_dir=None, local_files_only=False):
        asked.append((repo_id, revision, list(allow_patterns), local_files_only))
        for name in allow_patterns:
            if (saved["sharded"] / name).is_file():
                snapshot.mkdir(exist_ok=True)
                shutil.copy(saved["sharded"] / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = GPT.from_pretrained(REPO)
    np.testing.assert_array_equal(npgpt_logits(model), npgpt_logits(GPT.from_pretrained(saved["sharded"])))
    shards = sorted(p.name for p in saved["sharded"].glob("model-*.safetensors"))
    assert asked == [(REPO, None, list(hub.MODEL_FILES), False), (REPO, "snap", shards, False)]
    assert not any(name.endswith(".bin") for _, _, names, _ in asked for name in names)


# ------------------------------------------------------------------ pickles are refused
def test_a_repo_with_only_pytorch_model_bin_is_refused(hf_home, saved):
    add_snapshot(hf_home, "org/old", commit_of("old"), {"config.json": saved["main"] / "config.json",
                                                        "pytorch_model.bin": b"\x80\x04 not even a valid pickle"})
    message = r"holds only pytorch_model.bin: npgpt reads safetensors only, because a .bin file is a pickle"
    with pytest.raises(CheckpointError, match=message) as info:
        GPT.from_pretrained("org/old")
    assert "org/old" in str(info.value) and "model.safetensors" in str(info.value)
    assert "save_pretrained(dir, safe_serialization=True)" in str(info.value)      # what to do


def test_a_pickle_known_only_from_the_hub_listing_is_refused(tmp_path, monkeypatch, saved):
    """Online the .bin is never downloaded: the Hub's file listing says it is all the repo has."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    shutil.copy(saved["main"] / "config.json", snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(snapshot))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None: ["config.json", "pytorch_model.bin"])
    with pytest.raises(CheckpointError, match="Hub repo 'org/old'.*holds only pytorch_model.bin.*pickle"):
        GPT.from_pretrained("org/old")


# ------------------------------------------------------------------ sharded checkpoints
def test_a_sharded_checkpoint_loads_from_the_hub_and_equals_transformers(hf_home, saved):
    add_snapshot(hf_home, "org/sharded", commit_of("sharded"), files_of(saved["sharded"]))
    model = GPT.from_pretrained("org/sharded")
    np.testing.assert_allclose(npgpt_logits(model), transformers_logits("org/sharded", hf_home), atol=1e-4, rtol=0)
    assert checkpoint.weights_path(saved["sharded"]).name == checkpoint.INDEX_NAME


def test_a_sharded_classifier_loads_whole(saved, tmp_path):
    classifier = GPTClassifier.from_pretrained(saved["main"], num_labels=3, labels=["a", "b", "c"], seed=4)
    directory = tmp_path / "clf"
    classifier.save_pretrained(directory)
    tensors = checkpoint.read_tensors(directory / checkpoint.WEIGHTS_NAME)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    from safetensors.numpy import save_file

    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(directory / shard))
    (directory / checkpoint.WEIGHTS_NAME).unlink()
    index = {"metadata": {}, "weight_map": {n: shard for shard, part in halves.items() for n in part}}
    (directory / checkpoint.INDEX_NAME).write_text(json.dumps(index))
    loaded = GPTClassifier.from_pretrained(directory)
    assert loaded.labels == ["a", "b", "c"]
    with no_grad():
        np.testing.assert_array_equal(loaded(IDS[:, :8]).numpy(), classifier(IDS[:, :8]).numpy())


def sharded_copy(saved, tmp_path):
    directory = tmp_path / "sharded"
    shutil.copytree(saved["sharded"], directory)
    return directory, json.loads((directory / checkpoint.INDEX_NAME).read_text())


def first_shard(index):
    return sorted(set(index["weight_map"].values()))[0]


def duplicate_into_first_shard(directory, index, name):
    """Write ``name`` (which lies in another shard) into the first shard too; the index is unchanged."""
    from safetensors.numpy import save_file

    first = directory / first_shard(index)
    other = directory / index["weight_map"][name]
    save_file({**checkpoint.read_tensors(first), name: checkpoint.read_tensors(other)[name]}, str(first))
    return index


@pytest.mark.parametrize("edit, error, message", [
    (lambda d, ix: "{not json", CheckpointError, r"model.safetensors.index.json: not valid JSON"),
    (lambda d, ix: "[]", CheckpointError, r"model.safetensors.index.json must hold a JSON object"),
    (lambda d, ix: {**ix, "weight_map": []}, CheckpointError, r"index.json must hold a non-empty object weight_map"),
    (lambda d, ix: {"metadata": {}}, CheckpointError, r"index.json must hold a non-empty object weight_map"),
    (lambda d, ix: {**ix, "metadata": 3}, CheckpointError, r"index.json: metadata must be a JSON object"),
    (lambda d, ix: {**ix, "weight_map": {**ix["weight_map"], "transformer.wte.weight": "../x.safetensors"}},
     CheckpointError, r"index.json: tensor 'transformer.wte.weight' maps to '../x.safetensors', which is not"),
    (lambda d, ix: {**ix, "weight_map": {**ix["weight_map"], "transformer.wte.weight": 7}},
     CheckpointError, r"maps to 7, which is not the file name of a .safetensors shard"),
    (lambda d, ix: {**ix, "weight_map": {**ix["weight_map"], "transformer.wte.weight": "model-9.safetensors"}},
     FileNotFoundError, r"model-9.safetensors is missing: .*index.json places tensors in it"),
    (lambda d, ix: {**ix, "weight_map": {**ix["weight_map"], "transformer.extra": first_shard(ix)}},
     CheckpointError, r"index.json: tensor 'transformer.extra' should be in model-00001-of-0000\d.safetensors, which"),
    (lambda d, ix: {**ix, "weight_map": {k: v for k, v in ix["weight_map"].items() if k != "transformer.ln_f.bias"}},
     CheckpointError, r"holds tensor 'transformer.ln_f.bias', but .*index.json does not name it"),
    (lambda d, ix: duplicate_into_first_shard(d, ix, "transformer.ln_f.bias"),
     CheckpointError, r"holds tensor 'transformer.ln_f.bias', but .*index.json places it in model-00002"),
    (lambda d, ix: (d / first_shard(ix)).write_bytes(b"\x00" * 4) and ix, CheckpointError,
     r"model-00001-of-0000\d.safetensors is truncated"),
], ids=["syntax", "not-object", "map-not-object", "no-map", "metadata", "path-outside", "not-a-name", "missing-shard",
        "tensor-not-in-shard", "tensor-not-in-index", "tensor-in-another-shard", "truncated-shard"])
def test_a_malformed_index_or_shard_is_an_error_naming_the_file(saved, tmp_path, edit, error, message):
    directory, index = sharded_copy(saved, tmp_path)
    new = edit(directory, index)
    (directory / checkpoint.INDEX_NAME).write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(error, match=message):
        GPT.from_pretrained(directory)


def test_the_hub_is_asked_for_shards_only_through_a_checked_index(hf_home, saved):
    files = files_of(saved["sharded"])
    snapshot = add_snapshot(hf_home, "org/evil", commit_of("evil"), files)
    (snapshot / checkpoint.INDEX_NAME).write_text(json.dumps({"weight_map": {"transformer.wte.weight": "/etc/passwd"}}))
    with pytest.raises(CheckpointError, match=r"index.json: tensor 'transformer.wte.weight' maps to '/etc/passwd'"):
        GPT.from_pretrained("org/evil")


# ------------------------------------------------------------------ the classifier and the tokenizer
def test_the_classifier_takes_a_hub_id_and_a_revision(hf_home):
    classifier = GPTClassifier.from_pretrained(REPO, num_labels=2, revision="v1")
    np.testing.assert_array_equal(npgpt_logits(classifier.transformer),
                                  npgpt_logits(GPT.from_pretrained(REPO, revision="v1")))


def test_a_hub_tokenizer_loads_and_encodes_as_transformers(hf_home, gpt2_files):
    add_snapshot(hf_home, "openai-community/gpt2", commit_of("gpt2"), gpt2_files)
    tok = Tokenizer.from_pretrained("openai-community/gpt2")
    assert tok == Tokenizer.from_pretrained("gpt2")                  # the pinned vocabulary, the same tokenizer
    assert tok.encode("The cat sits on the") == [464, 3797, 10718, 319, 262]
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2Tokenizer.from_pretrained("openai-community/gpt2", cache_dir=str(hf_home / "hub"),
                                                           local_files_only=True)
    text = "The cat sits on the mat. naïve café 你好 👍 <|endoftext|>"
    assert reference.encode(text) == tok.encode(text, allowed_special="all")


def test_tokenizer_gpt2_is_the_pinned_vocabulary_unless_a_revision_is_asked(hf_home, gpt2_files):
    small = Tokenizer.train(["the cat sits on the mat " * 50], 270, show_progress=False)
    small.save(add_snapshot(hf_home, "gpt2", commit_of("gpt2"), {}))
    assert Tokenizer.from_pretrained("gpt2").vocab_size == 50257     # pinned first: no Hub needed for "gpt2"
    assert Tokenizer.from_pretrained("gpt2", revision="main") == small
    with pytest.raises(FileNotFoundError, match=r"no tokenizer 'org/absent'.*not in the Hub cache"):
        Tokenizer.from_pretrained("org/absent")


# ------------------------------------------------------------------ without huggingface_hub
def test_without_huggingface_hub_the_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)        # import huggingface_hub now fails
    monkeypatch.chdir(tmp_path)
    install = re.escape('pip install -e ".[hub]"')
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'org/tiny-gpt2': tried .*huggingface_hub.*" + install):
        GPT.from_pretrained(REPO)
    with pytest.raises(FileNotFoundError, match=install):
        GPTClassifier.from_pretrained("gpt2", num_labels=2)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer 'openai-community/gpt2'.*" + install):
        Tokenizer.from_pretrained("openai-community/gpt2")
    with pytest.raises(hub.HubNotInstalled, match=install):
        hub.snapshot(REPO, hub.MODEL_FILES)


def test_paths_are_never_hub_ids(tmp_path, monkeypatch):
    assert hub.is_repo_id("gpt2") and hub.is_repo_id("openai-community/gpt2") and hub.is_repo_id("org/name.v1")
    for name in ("./gpt2", "/abs/dir", "a/b/c", "../x", "org/../x", "a--b", "", "x.git", pathlib.Path("gpt2")):
        assert not hub.is_repo_id(name), name
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError) as info:                   # a missing path is not sent to the Hub
        GPT.from_pretrained(tmp_path / "absent")
    assert "Hub" not in str(info.value)


def test_the_hub_module_imports_only_the_standard_library_and_huggingface_hub():
    tree = ast.parse((pathlib.Path(hub.__file__)).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                assert name.split(".")[0] in set(sys.stdlib_module_names) | {"huggingface_hub"}, name
