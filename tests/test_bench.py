"""The benchmark workloads' accounting (not their speed: speed is never tested)."""

import json

import numpy as np
import pytest

from npgpt.bench.train import WORKLOAD
from npgpt.model import GPTConfig
from npgpt.training.flops import flops_per_token, model_flops_utilisation


def train_small_config():
    return GPTConfig(**{k: v for k, v in WORKLOAD.items() if k not in ("batch_size", "seq_len", "steps", "warmup")})


def test_flops_per_token_of_train_small_matches_the_perf_notes():
    # PyTorch's 3,719 tokens/s on train-small is 63% of 195 GFLOP/s: ~33 MFLOP per token.
    assert abs(flops_per_token(train_small_config()) / 1e6 - 33.1) < 0.5


def test_mfu_definition():
    # docs/performance.md eq:mfu: MFU = tokens/s * FLOPs per token / peak.
    assert abs(model_flops_utilisation(3719, flops_per_token(train_small_config()), 195e9) - 0.632) < 0.005


def test_gpu_bench_has_help_and_refuses_to_run_without_cuda():
    import subprocess
    import sys

    from npgpt import backend

    help_run = subprocess.run([sys.executable, "-m", "npgpt.bench", "gpu", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--quick" in help_run.stdout
    if backend.cuda_available():
        return
    env_free = subprocess.run([sys.executable, "-m", "npgpt.bench", "gpu", "--json"], capture_output=True, text=True,
                              env={**__import__("os").environ, "NPGPT_FAKE_CUDA": "0"})
    assert env_free.returncode != 0 and "no usable CUDA device" in env_free.stderr


def test_gpu_peaks_are_found_by_device_name():
    from npgpt.bench.gpu import _peaks

    assert _peaks("NVIDIA H200", None)["float16"] == 989e12
    assert _peaks("Some Future GPU", None) is None
    assert _peaks("x", [1.0, 2.0]) == {"float32": 1.0, "float16": 2.0}


@pytest.mark.gpu
def test_gpu_bench_runs_its_code_paths_on_a_device():
    # On the CuPy stand-in (NPGPT_FAKE_CUDA=1) or a real GPU: every workload runs, tiny (--quick).
    import argparse

    from npgpt import backend
    from npgpt.bench import gpu

    if not backend.cuda_available():
        pytest.skip("CuPy with a CUDA GPU is not available (NPGPT_FAKE_CUDA=1 runs this on the CuPy stand-in)")
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    result = gpu.run(parser.parse_args(["--quick", "--no-torch", "--peak-flops", "1e12", "2e12"]))
    assert result["parity_ok"] and result["parity_max_abs_diff"] <= 1e-4
    for key in ("train_small_float32", "train_small_float16", "train_124m_float32", "train_124m_float16"):
        assert result[key]["tokens_per_s"] > 0 and 0 < result[key]["mfu"]
        assert result[key]["reserved_mb"] >= result[key]["allocated_mb"] >= 0      # like with like (PyTorch's two)
    assert result["generate_124m_tokens_per_s"] > 0
    graph = result["generate_124m_cuda_graph"]
    assert graph.get("error") is None and graph["tokens_per_s"] > 0
    check = result["cuda_graph_check"]                  # npgpt-small, 100 tokens: the cache filled to the context
    assert check.get("error") is None and check["ids_match_plain"] and check["first_differing_position"] is None
    assert check["new_tokens"] + check["prompt_tokens"] <= 128 and 0 <= check["max_abs_logit_diff"] < 1e-3
    assert len(check["memory_after_each_repeat"]) == 5


@pytest.mark.gpu
def test_the_graph_check_notices_a_mask_that_lets_the_step_see_the_empty_cache(monkeypatch):
    # The bench's device check of the CUDA graph runs on npgpt-small because a trained model's tokens
    # depend on what attention sees: a static step that also sees the cache's unwritten positions
    # (zero keys) must change the ids and the logits.
    import types

    import npgpt.functional as F
    from npgpt import backend
    from npgpt.bench import gpu
    from npgpt.generation import cuda_graph

    if not backend.cuda_available():
        pytest.skip("CuPy with a CUDA GPU is not available (NPGPT_FAKE_CUDA=1 runs this on the CuPy stand-in)")

    def leaky(allowed, hidden, every_query_sees_a_key=False):
        return F.KeyMask(allowed | True, hidden & False, True)

    monkeypatch.setattr(cuda_graph, "F", types.SimpleNamespace(KeyMask=leaky))
    check = gpu.graph_check(new_tokens=20, repeats=0)
    assert not check["ids_match_plain"] and check["first_differing_position"] >= check["prompt_tokens"]
    assert check["max_abs_logit_diff"] > 0.1


def test_fit_exponent_recovers_a_power_law():
    from npgpt.bench.common import fit_exponent

    sizes = [1, 2, 4, 8, 16]
    assert abs(fit_exponent(sizes, [3.0 * s for s in sizes]) - 1.0) < 1e-12
    assert abs(fit_exponent(sizes, [0.5 * s * s for s in sizes]) - 2.0) < 1e-12
    assert abs(fit_exponent(sizes, [7.0 for _ in sizes])) < 1e-12
    with pytest.raises(ValueError, match="at least two"):
        fit_exponent([1], [1.0])


def test_train_124m_is_gpt2_small_at_256_tokens():
    from npgpt.bench.train import WORKLOADS, _model_config

    cfg = WORKLOADS["train-124m"]
    config = _model_config(cfg)
    assert config.num_parameters() == 124_439_808                 # GPT-2 small exactly
    assert (cfg["seq_len"], cfg["batch_size"]) == (256, 4)
    # docs/performance.md eq:flops-per-token with T = 256: 6 N + 12 L T C, N without the position table
    n = 124_439_808 - 1024 * 768
    assert flops_per_token(config, 256) == 6 * n + 12 * 12 * 256 * 768


def test_memory_breakdown_counts_the_arrays_of_a_step():
    from npgpt.bench.train import memory_breakdown
    from npgpt.model import GPT
    from npgpt.training.optim import AdamW, param_groups

    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    optimizer = AdamW(param_groups(model, 0.1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (4, 17))
    batch = (tokens[:, :-1], tokens[:, 1:])
    model.loss(*batch).backward()
    optimizer.step()                                 # the moments exist from the first step on
    optimizer.zero_grad()
    got = memory_breakdown(model, optimizer, lambda x, y: model.loss(x, y), batch)
    params = sum(p.data.nbytes for p in model.parameters()) / 1e6
    assert got["parameters"] == got["gradients"] == pytest.approx(params, abs=0.05)
    assert got["adam_moments"] == pytest.approx(2 * params, abs=0.05)
    assert 0 < got["activations"] < got["step_peak"]    # the peak holds the gradients on top
    assert all(p.grad is None for p in model.parameters())


def test_retain_freed_memory_is_idempotent():
    from npgpt import backend

    first = backend.retain_freed_memory()
    assert isinstance(first, bool) and backend.retain_freed_memory() == first


def test_lora_bench_sides_train_what_they_say():
    # python -m npgpt.bench lora: the npgpt LoRA side trains 2.4% of npgpt-small's shape, the full side all of it
    from npgpt.bench.lora import _npgpt_side

    lora_side = _npgpt_side(8, steps=1, warmup=0)
    assert lora_side["trainable"] == 4 * 8 * (256 + 768 + 256 + 256 + 256 + 1024 + 1024 + 256)
    assert lora_side["total"] == 5289472 + lora_side["trainable"] and lora_side["loss"] > 0
    sft_side = _npgpt_side(8, steps=1, warmup=0, sft=True)          # the masked loss: half of each row's targets
    assert sft_side["trainable"] == lora_side["trainable"] and sft_side["loss"] > 0


def test_lora_bench_takes_each_ratio_within_a_round():
    # docs/benchmarks.md, "Measuring a ratio": a pair's ratio is taken within a round, then the median over rounds
    from npgpt.bench.lora import summarize

    def side(seconds, rss):
        return {"seconds": seconds, "peak_rss_mb": rss, "step_rss_mb": rss / 2, "trainable": 1, "total": 40}

    rounds = [{"npgpt-lora": side(1.0, 100), "torch-lora": side(2.0, 400)},
              {"torch-lora": side(9.0, 400), "npgpt-lora": side(3.0, 100)},     # a slow round: the ratio holds
              {"npgpt-lora": side(1.0, 100), "torch-lora": side(1.5, 400), "trl-sft": None}]
    got = summarize(rounds, rank=8)
    assert got["npgpt_lora_vs_peft_speed"] == 2.0 and got["npgpt_lora_vs_peft_speed_range"] == [1.5, 3.0]
    assert got["npgpt_lora_vs_peft_rss"] == 0.25 and got["median_step_ms"]["npgpt-lora"] == 1000.0
    assert "npgpt_sft_vs_trl_speed" not in got and got["trainable_share_npgpt"] == 0.025


@pytest.mark.slow
def test_the_prepared_gpu_check_writes_one_json_even_without_a_gpu(tmp_path):
    # benchmarks/gpu_check.sh (docs/gpu.md, "The first GPU"): every part runs or is recorded as failed.
    import json
    import os
    import pathlib
    import subprocess

    from npgpt import backend

    if backend.cuda_available():
        pytest.skip("a GPU is here: the script would measure it (run it by hand)")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "NPGPT_FAKE_CUDA": ""}
    out = tmp_path / "check.json"
    subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(out)], env=env, check=True, timeout=400,
                   capture_output=True)
    report = json.loads(out.read_text())
    assert report["device"]["usable"] is False and report["device"]["reason"]
    assert report["device_tests"]["exit_status"] == 0 and report["bench_exit_status"] == 2
    assert report["cuda_graph_tests"]["exit_status"] == 0 and not report["cuda_graph_tests"]["failures"]
    assert "no usable CUDA device" in report["bench_log_tail"][-1]
    assert report["data_parallel"] == "fewer than 2 GPUs or no mpiexec"


def test_gpu_count_counts_launches_and_bytes_on_the_stand_in():
    # --count needs no GPU: the stand-in is put in place for the count and taken away after it.
    import argparse

    import fake_cupy

    from npgpt.bench import gpu

    was = fake_cupy.installed()
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    result = gpu.run(parser.parse_args(["--count", "--quick"]))
    assert fake_cupy.installed() == was
    for key in ("train_step", "greedy_token"):
        counts = result[key]
        assert counts["launches"] > 0 and counts["bytes"] == counts["bytes_read"] + counts["bytes_written"] > 0
    assert result["train_step"]["to_device"] == 1          # the batch, once; nothing else crosses per step
    graph = result["greedy_token_cuda_graph"]               # the same token as one CUDA graph replay
    assert graph["launches"] == graph["whole_context"]["launches"] == 1 and graph["to_host"] == 0
    assert graph["graph_nodes"] > result["greedy_token"]["launches"] == graph["launches_without_graph"]
    assert 0 < graph["extra_bytes"] < graph["whole_context"]["extra_bytes"]      # the longer cache reads more


def test_nanogpt_char_sides_run_the_same_model_and_loop(tmp_path):
    # python -m npgpt.bench nanogpt-char: both sides start from npgpt's weights and draw the same batches,
    # so their losses agree to float32 rounding, step after step (the comparison is of speed alone).
    pytest.importorskip("torch")
    from npgpt.bench import nanogpt_char

    text = "ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 40
    nanogpt_char.write_char_dataset(tmp_path, text)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # a shared machine: two-threaded torch can wait seconds per step
    try:
        mine = nanogpt_char.run_npgpt(tmp_path, 3, workers=2, eval_iters=2)
        theirs = nanogpt_char.run_torch(tmp_path, 3, eval_iters=2)
    finally:
        torch.set_num_threads(threads)
    assert [e["iter"] for e in mine["evals"]] == [0, 3]
    for a, b in zip(mine["evals"], theirs["evals"]):
        assert abs(a["val"] - b["val"]) < 1e-4 and abs(a["train"] - b["train"]) < 1e-4
    assert abs(mine["last_loss"] - theirs["last_loss"]) < 1e-4
    assert mine["evals"][0]["val"] == pytest.approx(np.log(len(set(text))), abs=0.05)    # uniform at the start


def test_nanogpt_char_as_two_mpi_ranks_trains_as_two_threads_do_bit_for_bit(tmp_path):
    # --ranks 2: each rank its 6 of the batch's rows, gradients and evaluation losses summed over the ranks
    # (docs/distributed.md). Two thread shards split the rows the same way and add the same two halves:
    # the losses must be equal bit for bit (a missing gradient sum, a missing row split or a wrong share
    # would not be), and equal to one process's to float32 rounding.
    import shutil
    import subprocess
    import sys

    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec not found (pip install -e \".[mpi]\")")
    from npgpt.bench import nanogpt_char

    text = "ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 40
    nanogpt_char.write_char_dataset(tmp_path, text)
    flags = ["--data", str(tmp_path), "--iters", "3"]
    ranked = nanogpt_char._ranks_in_child(2, flags, timeout=300)

    def side(workers):
        out = subprocess.run([sys.executable, "-m", "npgpt.bench", "nanogpt-char", "--json", "--side", "npgpt",
                              *flags, "--workers", str(workers)], capture_output=True, text=True, check=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])

    threads, alone = side(2), side(1)
    assert ranked["ranks"] == 2 and ranked["workers"] == 1 and threads["workers"] == 2
    assert [e["iter"] for e in ranked["evals"]] == [0, 3]
    assert ranked["evals"] == threads["evals"] and ranked["last_loss"] == threads["last_loss"]
    for a, b in zip(ranked["evals"], alone["evals"]):
        assert a["val"] == pytest.approx(b["val"], abs=1e-5) and a["train"] == pytest.approx(b["train"], abs=1e-5)


def test_quartiles_are_numpys_default_percentiles():
    from npgpt.bench.common import quartiles

    for values in ([1.0], [3.0, 1.0], [1.2, 0.9, 1.1, 1.3, 1.0], list(np.random.default_rng(0).random(8))):
        assert quartiles(values) == pytest.approx(tuple(np.percentile(values, [25, 75])))
    with pytest.raises(ValueError):
        quartiles([])


def test_verify_cost_times_the_pass_three_ways_and_divides_by_the_plain_one_token_step():
    from npgpt.bench.generate import verify_cost
    from npgpt.model import GPT

    model = GPT(GPTConfig(vocab_size=50, block_size=64, n_layer=1, n_head=2, n_embd=32), seed=0).eval()
    got = verify_cost(model, context=8, widths=(1, 3), repeats=2)
    for way in ("", "plain_", "plain_1t_"):
        assert all(got[f"{way}step_ms_{w}_tokens"] > 0 for w in (1, 3))
    assert got["plain_cost_1_vs_1"] == 1.0 and got["panel_copy_ms"] >= 0
    step, one = got["step_ms_3_tokens"], got["plain_step_ms_1_tokens"]     # both rounded to 0.1 ms
    assert (step - 0.05) / (one + 0.05) - 0.005 <= got["cost_3_vs_1"] <= (step + 0.05) / max(one - 0.05, 1e-9) + 0.005
    assert all(m.panels is None for _, m in model.named_modules() if hasattr(m, "panels"))


def test_lookup_task_sums_the_same_generations_on_both_sides_of_every_pair(tmp_path, monkeypatch):
    """Each timed sample of the prompt-lookup bench, ours and transformers' alike, is the sum of
    ``generations_per_sample`` whole generations; the ids agree with plain greedy decoding."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import argparse

    from npgpt.bench import generate as bench
    from npgpt.model import GPT

    model = GPT(GPTConfig(vocab_size=60, block_size=64, n_layer=1, n_head=2, n_embd=32), seed=0).eval()
    model.save_pretrained(tmp_path)
    hf = bench.load_torch(tmp_path)
    generations = {"ours": 0, "hf": 0}

    new_tokens = []                                    # each of our generations' length

    def counted(side, timed):
        def run(*args):
            generations[side] += 1
            if side == "ours":
                new_tokens.append(args[2])
            return timed(*args)
        return run

    monkeypatch.setattr(bench, "_timed_generate", counted("ours", bench._timed_generate))
    monkeypatch.setattr(bench, "_timed_hf", counted("hf", bench._timed_hf))
    ids = np.array([[5, 6, 7, 8, 9] * 4])
    args = argparse.Namespace(prompt_lookup=4, new_tokens=12, repeats=2, sample_seconds=0.0)   # one generation a side
    got = bench._lookup_task(model, ids, args, hf)
    assert got["generations_per_sample"] == 1 and got["same_ids"] and got["torch_lookup_same_ids"]
    assert 0 < got["prompt_pass_ms"] and new_tokens.count(1) == 3     # the prompt's pass: three 1-token generations
    assert got["speedup"]["iqr"][0] <= got["speedup"]["median"] <= got["speedup"]["iqr"][1]
    # ours: 2 warm-ups, 1 to size the samples, 2 x 2 timed, 1 counting passes, 3 prompts alone, 2 against transformers
    assert generations["ours"] == 2 + 1 + 4 + 1 + 3 + 2
    assert generations["hf"] == 1 + 2 * 2              # 1 warm-up, then plain and lookup in each pair
    args.sample_seconds = 0.05                                  # several short generations a side
    generations.update(ours=0, hf=0)
    got = bench._lookup_task(model, ids, args, hf)
    runs = got["generations_per_sample"]
    assert runs > 1
    assert generations["ours"] == 2 + 1 + 2 * 2 * runs + 1 + 3 + 2 * runs
    assert generations["hf"] == 1 + 2 * 2 * runs


def test_spread_gives_the_median_range_and_numpys_interquartile_range():
    from npgpt.bench.generate import _spread

    values = [1.0, 5.0, 2.0, 4.0, 3.0, 10.0]
    got = _spread(values, 3)
    assert got["median"] == 3.5 and got["range"] == [1.0, 10.0]
    assert got["iqr"] == [round(float(q), 3) for q in np.percentile(values, [25, 75])]
