"""Talking to a chat model: ``npgpt.ChatSession`` and ``npgpt chat`` (npgpt/apps/chat.py, docs/agent.md)."""

import io
import json

import pytest
from tiny_models import tiny_model_dir

import npgpt
from npgpt.apps.cli import main
from npgpt.finetuning.sft import SFTConfig, SFTTrainer
from npgpt.tokenizer.chat import ChatTemplateError


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny GPT fine-tuned until it has learned two answers by heart (greedy decoding says them)."""
    root = tmp_path_factory.mktemp("chat")
    tiny_model_dir(root / "model", npgpt.Tokenizer.from_pretrained("npgpt-small"), n_embd=32, seed=3)
    rows = [{"prompt": "Hi", "response": "Hello there."}, {"prompt": "Bye", "response": "See you."}]
    (root / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 6))
    SFTTrainer(SFTConfig(model=str(root / "model"), data=str(root / "c.jsonl"), val_data=str(root / "c.jsonl"),
                         out_dir=str(root / "run"), max_steps=40, lr=1e-2, batch_size=4, warmup_steps=0,
                         log_interval=100, eval_interval=100, workers=1), log=lambda line: None).train()
    return root / "run" / "checkpoint"


def test_it_answers_and_stops_at_the_end_of_turn(chat_model):
    session = npgpt.ChatSession.from_pretrained(chat_model, temperature=0, max_new_tokens=40)
    pieces = list(session.stream("Hi"))
    assert "".join(pieces) == "Hello there."          # and not 40 tokens: it stopped at <|im_end|>
    assert len(pieces) < 10
    assert session.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    session.reset()
    assert session.messages == []


def test_the_oldest_turns_are_dropped_never_the_system_prompt(chat_model):
    notices = []
    session = npgpt.ChatSession.from_pretrained(chat_model, temperature=0, max_new_tokens=16, system="Be kind.",
                                                on_notice=notices.append)
    for k in range(4):
        session.send(f"Hi number {k}")
    assert notices and all("oldest turn was dropped" in n and "64-token context" in n for n in notices)
    messages = session.messages
    assert messages[0] == {"role": "system", "content": "Be kind."}
    assert messages[1]["content"] != "Hi number 0" and messages[-2]["content"] == "Hi number 3"
    assert len(session.tokenizer.apply_chat_template(messages)) <= 64
    with pytest.raises(ValueError, match="the message is too long: .* context of 64 must leave room for 16"):
        session.send("word " * 80)
    assert session.messages == [{"role": "system", "content": "Be kind."}]


def test_an_answer_stopped_early_stays_in_the_history(chat_model):
    session = npgpt.ChatSession.from_pretrained(chat_model, temperature=0)
    stream = session.stream("Hi")
    first = next(stream)
    stream.close()                                     # what Ctrl-C does to the command's loop
    assert session.messages[-1] == {"role": "assistant", "content": first}


def test_a_seed_replays_a_sampled_session(chat_model):
    answers = [npgpt.ChatSession.from_pretrained(chat_model, temperature=1.5, seed=7, max_new_tokens=12).send("Bye")
               for _ in range(2)]
    assert answers[0] == answers[1]


def test_a_model_without_a_template_is_told_how_to_add_one(capsys):
    with pytest.raises(ChatTemplateError, match="add_chat_tokens.*npgpt sft --model MODEL"):
        npgpt.ChatSession.from_pretrained("npgpt-small")
    assert main(["chat", "npgpt-small", "--message", "hi"]) == 1
    assert "npgpt-small cannot chat" in capsys.readouterr().err


def test_the_command_answers_one_message(chat_model, capsys):
    assert main(["chat", str(chat_model), "--message", "Bye", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "See you.\n"


def test_the_command_keeps_a_session(chat_model, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/reset\nBye\n\n/exit\nHi\n"))
    assert main(["chat", str(chat_model), "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "Hello there.\nSee you.\n"            # /exit ended it before the last line
    assert "(conversation forgotten)" in captured.err


def test_ctrl_c_stops_the_answer_and_keeps_the_session(chat_model, capsys, monkeypatch):
    from npgpt.apps.chat import ChatSession

    real = ChatSession.stream
    calls = []

    def interrupted(self, message):
        calls.append(message)
        if len(calls) == 1:              # the first answer is interrupted after its first piece
            yield next(real(self, message))
            raise KeyboardInterrupt
        yield from real(self, message)

    monkeypatch.setattr(ChatSession, "stream", interrupted)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nBye\n"))
    assert main(["chat", str(chat_model), "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    # "H" of the stopped answer, then the second answer, asked with the first exchange in its history.
    assert "(stopped)" in captured.err and calls == ["Hi", "Bye"]
    assert captured.out.startswith("H") and captured.out.endswith("\n") and len(captured.out) > 2
