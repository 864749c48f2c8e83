"""npgpt.apps.evaluation: the sliding-window perplexity against Hugging Face's perplexity guide run with
transformers, perplexity and bits per byte as docs/agent.md eq:eval-perplexity and eq:bits-per-byte define them, lm-eval's
tokenisation of (context, continuation), acc and acc_norm (eq:acc-norm), and `npgpt eval`."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgpt
from npgpt.apps import evaluation
from npgpt.model import GPT, GPTConfig
from npgpt.tokenizer import Tokenizer

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ") * 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eval") / "model"
    tokenizer = Tokenizer.train([TEXT], 300, show_progress=False)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=1)
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 10.0           # a random model with opinions
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory, model.eval(), tokenizer


def direct_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) from one forward pass (the sequence fits the context)."""
    with npgpt.no_grad():
        logp = npgpt.F.log_softmax(model(np.array([ids]))).numpy()[0].astype(np.float64)
    return logp[np.arange(len(ids) - 1), ids[1:]]


def test_sliding_window_equals_hugging_faces_perplexity_guide(saved):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory, model, tokenizer = saved
    eot = tokenizer.special_tokens["<|endoftext|>"]
    ids = [eot] + tokenizer.encode(TEXT)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    for max_length, stride in ((16, 5), (16, 8), (12, 12)):
        # The guide's loop, verbatim in substance: each window's labels hide what earlier windows scored.
        nll, counted, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            trg_len = end - prev_end
            input_ids = torch.tensor([ids[begin:end]])
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                loss = hf(input_ids, labels=target_ids).loss
            n = int((target_ids[:, 1:] != -100).sum())        # the labels shift inside the model
            nll += float(loss) * n
            counted += n
            prev_end = end
            if end == len(ids):
                break
        ours = evaluation.text_perplexity(model, tokenizer, TEXT, stride=stride, max_length=max_length)
        assert ours.tokens == counted
        assert ours.nll == pytest.approx(nll, rel=1e-5)
        # docs/agent.md eq:eval-perplexity and eq:bits-per-byte
        assert ours.perplexity == pytest.approx(math.exp(nll / counted), rel=1e-5)
        assert ours.bits_per_byte == pytest.approx(nll / (math.log(2) * len(TEXT.encode())), rel=1e-5)
    overlapping = evaluation.text_perplexity(model, tokenizer, TEXT, stride=4, max_length=16)
    assert overlapping.tokens == len(ids) - 1          # every token scored once, the first one too


@given(cut=st.integers(10, 60))
def test_a_text_that_fits_one_window_is_scored_by_one_forward_pass(saved, cut):
    # eq:eval-perplexity: perplexity = exp(-(1/N) sum_t log p(x_t | x_<t)), here with all of x_<t in view
    _, model, tokenizer = saved
    text = TEXT[:cut]
    ids = [tokenizer.special_tokens["<|endoftext|>"]] + tokenizer.encode(text)
    if len(ids) > 16:
        return
    result = evaluation.text_perplexity(model, tokenizer, text)
    logp = direct_logprobs(model, ids)
    assert (result.tokens, result.windows) == (len(ids) - 1, 1)
    assert result.perplexity == pytest.approx(math.exp(-logp.mean()), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(-logp.sum() / math.log(2) / len(text.encode()), rel=1e-6)


def test_bad_windows_are_refused(saved):
    _, model, tokenizer = saved
    with pytest.raises(ValueError, match=r"stride must lie in 1\.\.16 \(the window\), got 17"):
        evaluation.text_perplexity(model, tokenizer, TEXT, stride=17)
    with pytest.raises(ValueError, match=r"max_length must lie in 2\.\.16"):
        evaluation.text_perplexity(model, tokenizer, TEXT, max_length=17)


def test_pairs_are_tokenised_as_lm_eval_tokenises_them(saved):
    _, _, tokenizer = saved
    ctx, cont = evaluation.encode_pair(tokenizer, "the winter of ", "our discontent")
    assert ctx == tokenizer.encode("the winter of")                        # the space moved on
    assert ctx + cont == tokenizer.encode("the winter of our discontent")
    eot = tokenizer.special_tokens["<|endoftext|>"]
    assert evaluation.encode_pair(tokenizer, "", "summer", eot) == ([eot], tokenizer.encode("summer"))


def test_loglikelihood_is_the_sum_over_the_continuation_tokens(saved):
    _, model, tokenizer = saved
    context, continuation = "the winter of", " our disc"
    (ll, greedy), = evaluation.loglikelihood(model, tokenizer, [(context, continuation)])
    ctx, cont = evaluation.encode_pair(tokenizer, context, continuation)
    assert len(ctx + cont) <= 16 and len(cont) > 1
    logp = direct_logprobs(model, ctx + cont)
    assert ll == pytest.approx(logp[-len(cont):].sum(), rel=1e-6)
    # a context longer than the model's 16 positions keeps its end (lm-eval's truncation)
    long_context = TEXT[:200]
    (ll_long, _), = evaluation.loglikelihood(model, tokenizer, [(long_context, " our")])
    ctx, cont = evaluation.encode_pair(tokenizer, long_context, " our")
    window = (ctx + cont)[-17:]                      # 16 inputs, and the last token only a target
    with npgpt.no_grad():
        logp = npgpt.F.log_softmax(model(np.array([window[:-1]]))).numpy()[0]
    assert len(cont) == 1 and ll_long == pytest.approx(float(logp[-1, window[-1]]), rel=1e-6)


def test_acc_and_acc_norm_are_lm_evals(saved):
    # docs/agent.md eq:acc-norm: acc_norm picks argmax_i ll_i / len(choice_i), the length in characters
    _, model, tokenizer = saved
    questions = [evaluation.MultipleChoice("Now is the winter of our", ["discontent", "summer", "a"], 0),
                 evaluation.MultipleChoice("the deep bosom of the", ["ocean buried", "sun", "York"], 0),
                 evaluation.MultipleChoice("made glorious", ["summer by this sun", "clouds"], 1)]
    result = evaluation.multiple_choice(model, tokenizer, questions)
    acc = acc_norm = 0
    for q, lls in zip(questions, result["loglikelihoods"]):
        expected = [evaluation.loglikelihood(model, tokenizer, [(q.context, " " + c)])[0][0] for c in q.choices]
        np.testing.assert_allclose(lls, expected, rtol=1e-6)
        acc += int(np.argmax(lls) == q.gold)
        acc_norm += int(np.argmax(np.array(lls) / [len(c) for c in q.choices]) == q.gold)
    assert (result["acc"], result["acc_norm"]) == (acc / 3, acc_norm / 3)
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": ["b"], "gold": 0}', "at least two non-empty strings"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 2}', r"gold must be the index of the right choice, 0\.\.1"),
    ('{"context": "a", "choices": ["b", "c"]}', 'expected an object with "context", "choices" and "gold"'),
    ('{"context": "a", "choices": ["b", "c"], "gold": 0', "Expecting"),
])
def test_bad_question_files_name_the_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"context": "x", "choices": ["y", "z"], "gold": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"q\.jsonl line 2: .*{message}"):
        evaluation.read_choices(path)


def test_npgpt_eval_prints_perplexity_and_accuracy(saved, tmp_path, capsys):
    from npgpt.apps import cli

    directory, model, tokenizer = saved
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "q.jsonl").write_text(json.dumps({"context": "Now is the", "choices": ["winter", "sun"],
                                                  "gold": 0}) + "\n")
    assert cli.main(["eval", str(directory), "--text", str(tmp_path / "t.txt"), "--choices",
                     str(tmp_path / "q.jsonl"), "--stride", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = evaluation.text_perplexity(model, tokenizer, TEXT, stride=8)
    assert report[str(tmp_path / "t.txt")]["perplexity"] == pytest.approx(expected.perplexity)
    assert report[str(tmp_path / "q.jsonl")]["questions"] == 1
    assert cli.main(["eval", str(directory)]) == 1
    assert "say what to evaluate on" in capsys.readouterr().err
