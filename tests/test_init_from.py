"""Training from a pretrained model: ``npgpt train --init-from MODEL`` (docs/training.md,
"Starting from a pretrained model"; issue 21 §1)."""

import json

import numpy as np
import pytest

import npgpt
from npgpt.apps.cli import main
from npgpt.training.data import prepare_documents
from npgpt.training.settings import ConfigError
from npgpt.training.train import TrainConfig, Trainer

QUICK = dict(batch_size=8, eval_iters=4, log_interval=100, eval_interval=100, warmup_steps=0, workers=1)


def sentences(seed, n):
    """A small language npgpt-small never saw: plain sentences from a fixed grammar."""
    rng = np.random.default_rng(seed)
    who = ["the miller", "a fox", "my sister", "the old king", "our neighbour"]
    did = ["sold", "painted", "found", "carried", "buried"]
    what = ["a blue kettle", "the copper bell", "seven lanterns", "a wooden horse", "the silver key"]
    where = ["by the river", "in the barn", "at dawn", "under the bridge", "near the mill"]
    return " ".join(f"{rng.choice(who).capitalize()} {rng.choice(did)} {rng.choice(what)} {rng.choice(where)}."
                    for _ in range(n))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("init-from")
    tok = npgpt.Tokenizer.from_pretrained("npgpt-small")
    prepare_documents([sentences(k, 120) for k in range(12)], tok, root / "data", val_fraction=0.2, progress=False,
                      workers=1)
    return root


def test_the_starting_logits_are_the_models_exactly(data, tmp_path):
    trainer = Trainer(TrainConfig(data_dir=str(data / "data"), out_dir=str(tmp_path / "run"), init_from="npgpt-small",
                                  max_steps=1, **QUICK), log=lambda line: None)
    base = npgpt.GPT.from_pretrained("npgpt-small")
    assert trainer.model_config.n_embd == base.config.n_embd == trainer.config.n_embd == 256
    ids = np.array([npgpt.Tokenizer.from_pretrained("npgpt-small").encode("The miller sold a blue kettle")])
    with npgpt.no_grad():
        np.testing.assert_array_equal(trainer.model.eval()(ids).numpy(), base(ids).numpy())


@pytest.mark.slow
def test_a_few_steps_lower_the_held_out_loss(data, tmp_path):
    trainer = Trainer(TrainConfig(data_dir=str(data / "data"), out_dir=str(tmp_path / "run"), init_from="npgpt-small",
                                  block_size=64, max_steps=12, lr=5e-4, **QUICK), log=lambda line: None)
    start = trainer.evaluate()
    summary = trainer.train()
    assert summary["val_loss"] < start - 0.3, (start, summary["val_loss"])
    # The run directory is a normal run: a checkpoint that loads, with the model's tokenizer.
    tuned = npgpt.GPT.from_pretrained(tmp_path / "run" / "checkpoint")
    assert tuned.config.block_size == 64 and tuned.config.n_layer == 4
    assert npgpt.Tokenizer.from_pretrained(tmp_path / "run" / "checkpoint") == npgpt.Tokenizer.from_pretrained("npgpt-small")


@pytest.mark.slow
def test_resume_continues_exactly(data, tmp_path):
    settings = dict(data_dir=str(data / "data"), init_from="npgpt-small", block_size=32, max_steps=4, lr=5e-4, **QUICK)
    Trainer(TrainConfig(out_dir=str(tmp_path / "a"), **settings), log=lambda line: None).train()
    Trainer(TrainConfig(out_dir=str(tmp_path / "b"), **settings), log=lambda line: None).train(stop_at=2)
    Trainer.resume(tmp_path / "b", log=lambda line: None).train()
    a = npgpt.GPT.from_pretrained(tmp_path / "a" / "checkpoint")
    b = npgpt.GPT.from_pretrained(tmp_path / "b" / "checkpoint")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


def test_the_architecture_is_the_models(data, tmp_path):
    base = dict(data_dir=str(data / "data"), out_dir=str(tmp_path / "run"), init_from="npgpt-small", **QUICK)
    with pytest.raises(ConfigError, match=r"n_layer=6 would change the architecture of npgpt-small \(n_layer=4\)"):
        Trainer(TrainConfig(n_layer=6, **base))
    with pytest.raises(ConfigError, match="block_size=256 is longer than the 128 positions npgpt-small"):
        Trainer(TrainConfig(block_size=256, **base))
    # Given on purpose, the default value is refused as well when it is not the model's (the CLI knows).
    with pytest.raises(ConfigError, match="n_embd=128 would change"):
        Trainer(TrainConfig(**base), given={"n_embd"})


def test_data_of_another_tokenizer_is_refused_naming_both(tmp_path):
    other = npgpt.Tokenizer.train([sentences(1, 200)], 300, show_progress=False)
    prepare_documents([sentences(k, 50) for k in range(4)], other, tmp_path / "data", progress=False, workers=1)
    with pytest.raises(ValueError, match=r"another tokenizer than npgpt-small's: the data's .* has 300 ids, 43 merges, "
                                         r"special tokens <\|endoftext\|>; npgpt-small's has 8,192 ids, 7,935 merges"):
        Trainer(TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), init_from="npgpt-small",
                            **QUICK))


@pytest.mark.slow
def test_the_command_line_composes(data, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sentences(99, 300))
    assert main(["prepare", "--input", str(corpus), "--tokenizer", "npgpt-small", "--out", str(tmp_path / "d"),
                 "--quiet", "--workers", "1"]) == 0
    assert main(["train", "--init-from", "npgpt-small", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--block-size", "32", "--eval-iters", "1", "--workers", "1", "--quiet"]) == 0
    state = json.loads((tmp_path / "r" / "checkpoint" / "trainer_state.json").read_text())
    assert state["train_config"]["init_from"] == "npgpt-small" and state["train_config"]["n_embd"] == 256
    capsys.readouterr()
    assert main(["train", "--init-from", "npgpt-small", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r2"),
                 "--n-layer", "4", "--n-head", "8"]) == 1
    assert "--n-head=8 would change the architecture of npgpt-small (n_head=4)" in capsys.readouterr().err


def test_a_hub_id_works_through_the_hub_extra(data, tmp_path, monkeypatch):
    """--init-from org/name: model and tokenizer from the Hugging Face Hub's cache (built here, offline)."""
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf"
    repo = home / "hub" / "models--someone--tiny-chat"
    snapshot = repo / "snapshots" / ("0" * 40)
    npgpt.GPT.from_pretrained("npgpt-small").save_pretrained(snapshot)
    npgpt.Tokenizer.from_pretrained("npgpt-small").save(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = Trainer(TrainConfig(data_dir=str(data / "data"), out_dir=str(tmp_path / "run"),
                                  init_from="someone/tiny-chat", max_steps=1, **QUICK), log=lambda line: None)
    ids = np.array([[5, 6, 7]])
    with npgpt.no_grad():
        np.testing.assert_array_equal(trainer.model.eval()(ids).numpy(),
                                      npgpt.GPT.from_pretrained("npgpt-small")(ids).numpy())
