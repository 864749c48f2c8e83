"""The thirty-line BPE of docs/tokenizer.md ("The whole algorithm, on one page") is the library's BPE.

The page's own listing checks it on one sonnet (tests/suites/test_docs.py). Here the same code,
read from the page, is compared with ``Tokenizer.train`` and ``Tokenizer.encode`` on random
texts: same merges, in the same order (the tie rule included), and the same ids for text the
merges were not learned on, with both values of ``min_frequency``.
"""

import collections
import pathlib
import re
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from npgpt.tokenizer import Tokenizer, pretokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]


def page_bpe():
    """``train`` and ``encode`` as docs/tokenizer.md writes them, executed from the page."""
    page = (ROOT / "docs" / "tokenizer.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "def train(text, n_merges" in block)
    namespace = {"collections": collections, "pretokenize": pretokenize}
    exec(compile(code, "docs/tokenizer.md", "exec"), namespace)
    return namespace["train"], namespace["encode"]


TRAIN, ENCODE = page_bpe()
# Few letters, so that pairs repeat and counts tie; a space, a newline, an accent and a CJK
# character, so that pre-tokens and multi-byte characters take part.
WORDS = st.text(alphabet="abcab é日\n", min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=60), merges=st.integers(1, 40),
       min_frequency=st.sampled_from([1, 2]), other=st.text(alphabet="abcab é日\nx", max_size=40))
def test_the_page_learns_the_librarys_merges_and_ids(words, merges, min_frequency, other):
    text = " ".join(words)
    mine = TRAIN(text, merges, min_frequency)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # "training stopped at ... tokens": expected here
        library = Tokenizer.train(text, 256 + merges, special_tokens=(), min_frequency=min_frequency,
                                  show_progress=False)
    assert mine == [(library.token_bytes(a), library.token_bytes(b)) for a, b in library.merges]
    assert ENCODE(other, mine) == library.encode(other)
    assert ENCODE(text, mine) == library.encode(text)
