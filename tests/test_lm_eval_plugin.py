"""lm-eval-harness runs npgpt models (npgpt.apps.lm_eval_plugin): a task defined here (YAML + JSONL, no Hub),
run on a random GPT-2 saved by npgpt, once with lm-eval's own ``hf`` backend (transformers) and once with
npgpt's: the same per-example log-likelihoods (1e-4), the same accuracy, the same generations."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")      # before `datasets` is imported: it reads it once
lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

from npgpt.apps import lm_eval_plugin  # noqa: E402  (registers "npgpt"; needs lm_eval)
from npgpt.model import GPT, GPTConfig  # noqa: E402
from npgpt.tokenizer import Tokenizer  # noqa: E402

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
        "arrows of outrageous fortune, or to take arms against a sea of troubles, and by opposing end them. "
        "To die, to sleep, no more; and by a sleep to say we end the heart-ache and the thousand natural shocks "
        "that flesh is heir to.") * 3
QUESTIONS = [
    {"context": "To be, or not to be, that is the", "choices": ["question", "answer", "sea of troubles"], "gold": 0},
    {"context": "the slings and arrows of", "choices": ["outrageous fortune", "a sleep", "no"], "gold": 0},
    {"context": "To die, to", "choices": ["sleep", "be or not to be, that is", "mind"], "gold": 0},
    {"context": "and by opposing ", "choices": ["end them", "the heart-ache"], "gold": 0},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = Tokenizer.train([TEXT], 320, show_progress=False)
    # std 0.3: a random model with opinions, so that the choices' scores differ clearly
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=16), seed=2)
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 15.0
    model.save_pretrained(root / "model")
    tokenizer.save(root / "model")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "choices.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tasks / "texts.jsonl").write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"text": TEXT[:90]}) + "\n")
    (tasks / "prompts.jsonl").write_text("".join(json.dumps({"context": q["context"], "target": "x"}) + "\n"
                                                 for q in QUESTIONS))
    data = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (tasks / "mc.yaml").write_text(
        "task: npgpt_test_mc\n" + data.format(tasks / "choices.jsonl") + "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / "rolling.yaml").write_text(
        "task: npgpt_test_rolling\n" + data.format(tasks / "texts.jsonl") + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (tasks / "generate.yaml").write_text(
        "task: npgpt_test_generate\n" + data.format(tasks / "prompts.jsonl") + "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n")
    return root


TASKS = ["npgpt_test_mc", "npgpt_test_rolling", "npgpt_test_generate"]


@pytest.fixture(scope="module")
def results(setup):
    """{backend: lm-eval's result} for the three tasks, each backend run once."""
    from lm_eval.tasks import TaskManager

    found = {}
    for backend in ("npgpt", "hf"):
        args = f"pretrained={setup / 'model'}" + (",dtype=float32" if backend == "hf" else "")
        found[backend] = lm_eval.simple_evaluate(model=backend, model_args=args, tasks=TASKS, batch_size=1,
                                                 device="cpu", log_samples=True,
                                                 task_manager=TaskManager(include_path=str(setup / "tasks")))
    return found


def task(results, backend, name):
    return results[backend]["results"][name], sorted(results[backend]["samples"][name], key=lambda s: s["doc_id"])


def test_multiple_choice_through_lm_eval_matches_its_hf_backend(results):
    ours, our_samples = task(results, "npgpt", "npgpt_test_mc")
    theirs, their_samples = task(results, "hf", "npgpt_test_mc")
    assert len(our_samples) == len(QUESTIONS)
    for a, b in zip(our_samples, their_samples):
        ours_ll = [r[0][0] for r in a["resps"]]
        theirs_ll = [r[0][0] for r in b["resps"]]
        np.testing.assert_allclose(ours_ll, theirs_ll, rtol=0, atol=1e-4)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]      # is_greedy
    assert ours["acc,none"] == theirs["acc,none"] and ours["acc_norm,none"] == theirs["acc_norm,none"]
    assert len({round(ll, 3) for s in our_samples for ll in [r[0][0] for r in s["resps"]]}) > 4   # not all alike


def test_rolling_loglikelihood_and_generation_match_the_hf_backend(results):
    ours, our_samples = task(results, "npgpt", "npgpt_test_rolling")
    theirs, their_samples = task(results, "hf", "npgpt_test_rolling")
    for a, b in zip(our_samples, their_samples):        # the long text spans several windows of 24 tokens
        np.testing.assert_allclose(a["resps"][0][0], b["resps"][0][0], rtol=1e-6, atol=1e-4)
    assert ours["bits_per_byte,none"] == pytest.approx(theirs["bits_per_byte,none"], rel=1e-5)
    ours, our_samples = task(results, "npgpt", "npgpt_test_generate")
    theirs, their_samples = task(results, "hf", "npgpt_test_generate")
    assert [s["resps"][0][0] for s in our_samples] == [s["resps"][0][0] for s in their_samples]
    assert any(s["resps"][0][0] for s in our_samples)        # something was generated


def test_the_plugin_is_lm_evals_command_line_with_npgpt_registered(setup, tmp_path, capsys):
    out = tmp_path / "results"
    try:
        lm_eval_plugin.main(["--model", "npgpt", "--model_args", f"pretrained={setup / 'model'}", "--tasks",
                             "npgpt_test_mc", "--include_path", str(setup / "tasks"), "--output_path", str(out)])
    except SystemExit as exc:          # lm-eval's command line may end with sys.exit(0)
        assert not exc.code
    printed = capsys.readouterr().out
    assert "npgpt_test_mc" in printed and "acc" in printed
    assert list(out.rglob("results_*.json"))

