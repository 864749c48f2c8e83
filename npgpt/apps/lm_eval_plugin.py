"""npgpt models in lm-eval-harness: ``python -m npgpt.apps.lm_eval_plugin --model npgpt --model_args pretrained=DIR``.

Companion of ``docs/agent.md`` (section "Evaluation"). lm-eval-harness (the
``lm-eval`` package) runs a model through three requests, each a list of
``Instance`` s whose ``args`` are:

* ``loglikelihood``: ``(context, continuation)`` -> ``(log p, is_greedy)``;
* ``loglikelihood_rolling``: ``(text,)`` -> ``log p(text)``, scored in
  windows of the model's context (perplexity tasks);
* ``generate_until``: ``(context, {"until": [...], "max_gen_toks": n, ...})``
  -> the generated text, cut before the first stop string.

:class:`NpgptLM` answers them with ``npgpt.apps.evaluation`` and the model's
own ``generate``; it subclasses lm-eval's ``TemplateLM``, which tokenises
the pairs by the same rule as its ``hf`` backend, so the two give the same
numbers for the same weights (tests/test_lm_eval_plugin.py). ``@register_model``
is lm-eval's way of adding a model: importing this module registers
``npgpt``. lm-eval 0.4 finds only its own models from its command line (it
has no entry-point group for others), so this module's ``__main__`` is
lm-eval's command line with npgpt registered: every ``lm_eval`` flag works.
In Python, ``lm_eval.simple_evaluate(model="npgpt", ...)`` after
``import npgpt.apps.lm_eval_plugin``.
"""

from __future__ import annotations

from typing import Any, Optional

import lm_eval.models  # noqa: F401  (lm-eval's own models first: it fills an empty registry only)
import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from npgpt import backend
from npgpt.apps import evaluation


@register_model("npgpt")
class NpgptLM(TemplateLM):
    """An npgpt ``GPT`` and its tokenizer as an lm-eval model.

    ``model_args``: ``pretrained`` (a directory, a shipped name such as
    ``npgpt-small``, or a Hub id), ``adapter`` (a LoRA adapter directory,
    optional), ``batch_size``, ``device`` (``cpu`` or ``cuda``),
    ``max_gen_toks`` (default 256).
    """

    def __init__(self, pretrained: str = "npgpt-small", adapter: Optional[str] = None, batch_size: int | str = 16,
                 device: str = "cpu", max_gen_toks: int = 256, **kwargs: Any) -> None:
        super().__init__()
        from npgpt.model import GPT
        from npgpt.tokenizer import Tokenizer

        self.model = GPT.from_pretrained(pretrained)
        if adapter:
            from npgpt.finetuning import lora

            lora.load_adapter(self.model, adapter)
        device = str(device or "cpu").split(":")[0]
        if device == "cuda" and not backend.cuda_available():
            device = "cpu"          # lm-eval's default device is cuda; its hf backend falls back the same way
        self.model.to(device).eval()
        self.npgpt_tokenizer = Tokenizer.from_pretrained(pretrained)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16   # "auto": a fixed size on NumPy
        self.max_gen_toks = int(max_gen_toks)
        eot = self.npgpt_tokenizer.special_tokens.get("<|endoftext|>")
        if eot is None:
            raise ValueError(f"{pretrained}: the tokenizer has no <|endoftext|>, which lm-eval needs as the prefix "
                             "of an empty context and as the end of a generation")
        self._eot = int(eot)

    # -------------------------------------------------------------- TemplateLM
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        return evaluation._encode(self.npgpt_tokenizer, string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.npgpt_tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        """``requests``: ``((context, continuation), context ids, continuation ids)``, as TemplateLM builds them."""
        results = evaluation.loglikelihood_tokens(self.model, [(list(ctx), list(cont)) for _, ctx, cont in requests],
                                                  batch_size=self.batch_size)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    # ---------------------------------------------------------------- requests
    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """``log p(text)``: the text cut into windows of the context, each token predicted once (lm-eval's
        ``get_rolling_token_windows``, the first window's context ``<|endoftext|>``)."""
        results = []
        for (text,) in [request.args for request in requests]:
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = float(sum(ll for ll, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) text after each context, cut before the first ``until`` string."""
        results = []
        for context, gen_kwargs in [request.args for request in requests]:
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eot_text = self.tok_decode([self.eot_token_id])
            if eot_text not in until:
                until.append(eot_text)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            do_sample = bool(kwargs.pop("do_sample", False)) or temperature > 0
            max_new = min(max_new, self.max_length - 1)
            ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.eot_token_id]
            out = self.model.generate(np.array([ids]), max_new_tokens=max_new, do_sample=do_sample,
                                      temperature=temperature if do_sample else 1.0, eos_token_id=self.eot_token_id,
                                      seed=0 if do_sample else None)
            new = [int(t) for t in backend.to_numpy(out)[0, len(ids):]]
            if self.eot_token_id in new:
                new = new[:new.index(self.eot_token_id)]
            text = self.tok_decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results


def main(argv: Optional[list[str]] = None) -> None:
    """lm-eval's own command line, with ``--model npgpt`` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
