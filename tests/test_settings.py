"""The settings dataclasses (npgpt.training.settings; docs/training.md, "From the command line").

One optimizer/precision base, ``OptimizerSettings``, for pretraining, supervised fine-tuning and
classifier fine-tuning: each setting is declared once and means the same in every command; the
warmup counts optimizer steps everywhere (docs/training.md eq:lr-schedule, ``W``).
"""

import argparse
import dataclasses
import math
import re

import pytest

from npgpt.apps.cli import TRAIN_FLAG_NAMES, build_parser, flag_of, main
from npgpt.finetuning.finetune import FinetuneConfig, finetune
from npgpt.finetuning.sft import SFTConfig
from npgpt.training.settings import ConfigError, OptimizerSettings
from npgpt.training.train import RunSettings, TrainConfig

CONFIGS = (TrainConfig, SFTConfig, FinetuneConfig)
OPTIMIZER = [f.name for f in dataclasses.fields(OptimizerSettings)]

# trainer_state.json's "train_config" / "sft_config" as main wrote them before the shared base (field
# order and all): a run directory from then must resume.
SAVED_TRAIN = {"lora_rank": 0, "lora_alpha": None, "lora_dropout": 0.0, "lora_targets": "c_attn", "data_dir": "d",
               "out_dir": "o", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0,
               "batch_size": 8, "grad_accum": 1, "max_steps": 30, "lr": 0.001, "min_lr": 0.0001, "warmup_steps": 3,
               "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0, "eval_interval": 100,
               "eval_iters": 10, "log_interval": 10, "checkpoint_interval": 0, "seed": 1337, "device": "cpu",
               "shard_optimizer": False, "dtype": "float32", "workers": 0, "peak_flops": 195000000000.0,
               "tokenizer_dir": "", "init_from": ""}
SAVED_SFT = {"lora_rank": 0, "lora_alpha": None, "lora_dropout": 0.0, "lora_targets": "c_attn", "model": "m",
             "data": "d", "val_data": "", "out_dir": "o", "val_fraction": 0.1, "block_size": None, "dropout": 0.0,
             "batch_size": 8, "grad_accum": 1, "max_steps": 30, "lr": 0.0001, "min_lr": 1e-05, "warmup_steps": 3,
             "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0, "eval_interval": 50,
             "eval_iters": 0, "log_interval": 10, "checkpoint_interval": 0, "seed": 1337, "device": "cpu",
             "shard_optimizer": False, "dtype": "float32", "workers": 0, "peak_flops": 195000000000.0}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_training_config_inherits_the_optimizer_settings(config):
    assert issubclass(config, OptimizerSettings)
    names = [f.name for f in dataclasses.fields(config)]
    assert set(OPTIMIZER) <= set(names) and len(names) == len(set(names))
    # warmup, betas, eps, clipping and precision are declared once, in the base, with one help text
    base = {f.name: f for f in dataclasses.fields(OptimizerSettings)}
    for f in dataclasses.fields(config):
        if f.name in ("warmup_steps", "beta1", "eps", "grad_clip", "dtype"):
            assert f.metadata["help"] == base[f.name].metadata["help"]
            assert f.default == base[f.name].default


@pytest.mark.parametrize("config", [TrainConfig, SFTConfig])
@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "must be a positive integer"), ("max_steps", 2.5, "must be a positive integer"),
    ("log_interval", -1, "must be a positive integer"), ("checkpoint_interval", -1, "must be >= 0"),
    ("workers", -2, "must be >= 0"), ("peak_flops", 0.0, "must be positive")])
def test_the_loops_settings_are_shared_by_pretraining_and_sft(config, field, value, message):
    """Both commands train with Trainer's loop: its settings are RunSettings', checked once, there."""
    assert issubclass(config, RunSettings)
    base = {f.name: f for f in dataclasses.fields(RunSettings)}
    for name in ("grad_accum", "log_interval", "checkpoint_interval", "device", "shard_optimizer", "workers"):
        mine = next(f for f in dataclasses.fields(config) if f.name == name)
        assert (mine.default, mine.metadata["help"]) == (base[name].default, base[name].metadata["help"])
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config(**{field: value})
    assert (info.value.owner, info.value.field) == (config.__name__, field)


def test_validation_runs_over_every_held_out_conversation_in_sft_only():
    assert SFTConfig(eval_iters=0).eval_iters == 0
    with pytest.raises(ConfigError, match="TrainConfig.eval_iters must be a positive integer"):
        TrainConfig(eval_iters=0)


@pytest.mark.parametrize("config", CONFIGS)
def test_warmup_counts_optimizer_steps_in_every_config(config):
    """docs/training.md eq:lr-schedule: lr_t = lr (t + 1) / W for t < W, the peak at t = W - 1, whatever the command."""
    c = config(warmup_steps=5, lr=1e-3)
    for t in range(5):
        assert c.learning_rate(t, 50) == pytest.approx(1e-3 * (t + 1) / 5)
    assert c.learning_rate(5, 50) == pytest.approx(1e-3)          # the cosine starts at the peak


@pytest.mark.parametrize("steps,warmup", [(3, 0), (30, 3), (999, 99), (1000, 100), (5000, 100)])
def test_the_default_warmup_fits_the_run(steps, warmup):
    """min(100, S // 10) steps: a tenth of any run up to 1,000 steps (docs/training.md)."""
    assert FinetuneConfig().warmup_for(steps) == warmup
    assert TrainConfig(max_steps=steps).warmup_steps == warmup
    assert SFTConfig(max_steps=steps).warmup_steps == warmup


def test_the_defaults_of_each_command_stay_its_own():
    """Retuned defaults: fine-tuning a pretrained model wants a smaller rate than pretraining."""
    train, sft, ft = TrainConfig(), SFTConfig(), FinetuneConfig()
    assert (train.lr, train.weight_decay, train.beta2, train.min_lr) == (1e-3, 0.1, 0.95, 1e-4)
    assert (sft.lr, sft.weight_decay, sft.beta2, sft.min_lr) == (1e-4, 0.0, 0.95, pytest.approx(1e-5))
    assert (ft.lr, ft.weight_decay, ft.beta2, ft.min_lr, ft.head_lr) == (1e-4, 0.01, 0.999, 0.0, 1e-4)
    # a fine-tune decays to 0 as it always did: half way through a 100-step run (10 of warmup), the mean
    assert ft.learning_rate(55, 100) == pytest.approx(0.5 * 1e-4)
    assert ft.learning_rate(99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)) * 1e-4)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("field,value,message", [
    ("warmup_steps", 0.1, "counts optimizer steps, got 0.1"), ("warmup_steps", -1, "must be >= 0"),
    ("lr", 0.0, "must be positive"), ("min_lr", 1.0, "must lie in 0..lr"), ("beta2", 1.0, "must lie in [0, 1)"),
    ("eps", 0.0, "must be positive"), ("grad_clip", -1.0, "must be >= 0"), ("weight_decay", -0.1, "must be >= 0"),
    ("dtype", "bfloat16", "must be one of float32, float16")])
def test_a_bad_optimizer_setting_is_refused_naming_it(config, field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        config(**{field: value})
    assert (info.value.owner, info.value.field) == (config.__name__, field)


def test_more_warmup_than_steps_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"TrainConfig.warmup_steps must lie in 0..max_steps \(30\), got 31"):
        TrainConfig(max_steps=30, warmup_steps=31)
    with pytest.raises(ConfigError, match=r"must lie in 0..the run's steps \(12\), got 20"):
        FinetuneConfig(warmup_steps=20).warmup_for(12, "the run's steps")


def test_the_old_fraction_warmup_of_finetuning_is_refused_with_the_new_setting():
    """`warmup` was a fraction of the steps in FinetuneConfig: the name must not come back with a
    meaning of steps, nor be taken silently; the error says what replaced it."""
    for call in (lambda: FinetuneConfig.from_dict({"warmup": 0.1}),
                 lambda: finetune(None, None, [], [], [], [], log=None, warmup=0.1)):
        with pytest.raises(ConfigError, match=r"warmup is no longer a setting: .*--warmup-steps N") as info:
            call()
        assert info.value.field == "warmup"
    with pytest.raises(TypeError):
        FinetuneConfig(warmup=0.1)


@pytest.mark.parametrize("value", ["0.1", "5"])
def test_finetune_dash_dash_warmup_is_a_usage_error_naming_warmup_steps(value, capsys):
    """argparse would take --warmup for an abbreviation of --warmup-steps (a count, not a fraction)."""
    assert main(["finetune", "--model", "m", "--data", "d.csv", "--out", "o", "--warmup", value]) == 2
    err = capsys.readouterr().err
    assert "--warmup is no longer a flag" in err and "--warmup-steps N" in err


def test_warmup_steps_is_a_flag_of_every_training_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("train", "sft", "finetune"):
        args, _ = sub[command].parse_known_args(["--warmup-steps", "7", "--out", "o", "--model", "m", "--data", "d"])
        assert args.warmup_steps == 7, command


def test_inherited_flags_are_listed_under_their_title(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    text = text[text.index("options:"):]            # past the usage line
    order = [text.index(s) for s in ("--max-steps INT", "optimizer and precision:", "--warmup-steps INT",
                                     "LoRA (docs/agent.md):", "--lora-rank INT")]
    assert order == sorted(order)


@pytest.mark.parametrize("config,saved", [(TrainConfig, SAVED_TRAIN), (SFTConfig, SAVED_SFT)])
def test_settings_saved_before_the_shared_base_load_the_same(config, saved):
    """Resuming reads the saved dict back with from_dict: names and values are unchanged (settings added
    since then take their defaults: an old LoRA run's adapter says itself which token rows train)."""
    loaded = config.from_dict(dict(saved))
    added_since = {"lora_freeze_markers": False} if config is SFTConfig else {}
    assert loaded.to_dict() == dict(saved, **added_since)
    with pytest.raises(ValueError, match=f"unknown {config.KIND} settings \\['warmups'\\]; known: "):
        config.from_dict(dict(saved, warmups=0.1))


@pytest.mark.parametrize("command,config,given", [("train", TrainConfig, ["--data", "d"]),
                                                  ("sft", SFTConfig, ["--model", "m", "--data", "d"])])
def test_a_settings_file_with_the_old_warmup_is_refused_naming_warmup_steps(command, config, given, tmp_path, capsys):
    """A --config file (or a saved run) that says "warmup" gets the explanation, in every command."""
    with pytest.raises(ConfigError, match="warmup is no longer a setting: .*--warmup-steps N"):
        config.from_dict({"warmup": 0.1})
    settings_file = tmp_path / "settings.json"
    settings_file.write_text('{"warmup": 0.1}')
    assert main([command, "--config", str(settings_file), "--out", str(tmp_path / "run"), *given]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: --warmup is no longer a setting") and "--warmup-steps N" in err


def test_defaults_fit_any_run_length():
    for steps in (1, 5, 30, 999, 5000):
        c = TrainConfig(max_steps=steps)
        assert 0 <= c.warmup_steps <= steps and c.warmup_steps == min(100, steps // 10)
    assert TrainConfig(lr=1e-6).min_lr == pytest.approx(1e-7)


def test_every_setting_has_a_flag_with_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, config_class, names in (("train", TrainConfig, TRAIN_FLAG_NAMES), ("finetune", FinetuneConfig, None)):
        flags = {o for a in sub[command]._actions for o in a.option_strings}
        for field in dataclasses.fields(config_class):
            assert flag_of(field.name, names) in flags, f"{config_class.__name__}.{field.name} has no flag"
