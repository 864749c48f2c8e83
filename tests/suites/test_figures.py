"""The book's figures: every picture a page shows exists and has alt text, every figure that
docs/scripts/book_figures.py draws is shown on the page its docstring names, and the picture
scripts run, writing only into the directory that --out names.
"""

import contextlib
import importlib.util
import io
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCRIPTS = DOCS / "scripts"
# ![alt](target "optional title") in Markdown, and <img ... src="..."> in raw HTML
MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*>", re.I)


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pictures():
    """(page, alt text, target) for every picture in docs/*.md, code blocks left out."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for alt, target in MARKDOWN_IMAGE.findall(text):
            found.append((page.name, alt, target))
        for tag in HTML_IMAGE.findall(text):
            src = re.search(r'src="([^"]+)"', tag)
            alt = re.search(r'alt="([^"]*)"', tag)
            found.append((page.name, alt.group(1) if alt else "", src.group(1) if src else ""))
    return found


def book_figures_table():
    """{file: page} from the table in book_figures.py's docstring."""
    rows = re.findall(r"^(\w+\.(?:svg|png))\s+(\w+\.md)\s", load("book_figures").__doc__, re.M)
    return dict(rows)


def test_every_picture_on_a_page_exists_and_has_alt_text():
    shown = pictures()
    assert shown, "no pictures found: has the pattern stopped matching?"
    for page, alt, target in shown:
        assert not target.startswith(("http://", "https://", "/")), f"{page}: {target} is not a file of the book"
        assert (DOCS / target).is_file(), f"{page} shows {target}, which does not exist"
        assert len(alt.split()) >= 3, f"{page}: the picture {target} needs alt text that says what it shows, got {alt!r}"


def test_the_book_has_at_least_ten_figures():
    shown = {target for _, _, target in pictures()}
    assert len(shown) >= 10, sorted(shown)


def test_every_drawn_figure_is_shown_on_its_page():
    table = book_figures_table()
    assert len(table) >= 8 and set(table) == {f"{name}.svg" for name in load("book_figures").FIGURES}
    for image, page in table.items():
        assert (DOCS / "images" / image).is_file(), f"docs/images/{image} is not committed: run the script below"
        assert f"images/{image}" in (DOCS / page).read_text(), f"{page} does not show images/{image}"


def test_the_docs_give_the_command_that_redraws_the_figures():
    book = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert "python docs/scripts/book_figures.py --out docs/images" in book


def test_every_picture_command_in_the_book_names_its_output():
    scripts = ("book_figures.py", "loss_curve.py", "interpretability_images.py")
    for page in [*DOCS.glob("*.md"), *SCRIPTS.glob("*.py")]:
        for line in page.read_text().splitlines():
            if line.strip().startswith("python docs/scripts/") and any(s in line for s in scripts):
                assert "--out" in line, f"{page.name}: {line.strip()}"


def test_book_figures_refuses_to_run_without_an_output_path():
    before = {p.name: p.stat().st_mtime_ns for p in (DOCS / "images").iterdir()}
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
        load("book_figures").main([])
    assert exit_info.value.code == 2 and "--out" in err.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in (DOCS / "images").iterdir()} == before


def test_the_merge_tree_replays_the_tokenizer():
    # The figure's tree is BPE replayed by hand; it must end in the tokenizer's own ids.
    from npgpt import Tokenizer

    figures = load("book_figures")
    tokenizer = Tokenizer.from_pretrained("npgpt-small")
    for word in (" understanding", " whale", " Shakespeare", "ing"):
        leaves, nodes, final = figures.merge_tree(tokenizer, word)
        assert final == tokenizer.encode(word)
        assert b"".join(leaves) == word.encode() and len(nodes) == len(leaves) - len(final)
        assert all(merged == (leaves + [m for *_, m in nodes])[a] + (leaves + [m for *_, m in nodes])[b]
                   for _, a, b, merged in nodes)


@pytest.mark.slow
def test_picture_scripts_write_every_figure_into_the_directory_they_are_given(tmp_path):
    pytest.importorskip("matplotlib")
    before = {p.name: p.stat().st_mtime_ns for p in (DOCS / "images").iterdir()}
    with contextlib.redirect_stdout(io.StringIO()):
        assert load("book_figures").main(["--out", str(tmp_path / "book")]) == 0
        assert load("interpretability_images").main(["--out", str(tmp_path / "interp")]) == 0
        run = tmp_path / "run"
        run.mkdir()
        rows = [{"step": s, "train_loss": 5.0 - s / 100, "lr": 1e-3} for s in range(1, 60)]
        rows += [{"step": s, "val_loss": 5.1 - s / 100} for s in (20, 40)]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        assert load("loss_curve").main([str(run), "--out", str(tmp_path / "curve" / "loss.png")]) == 0
    drawn = {p.name for p in (tmp_path / "book").iterdir()}
    assert drawn == set(book_figures_table())
    # Every committed figure says what a fresh drawing says, numbers to one unit in their last
    # digit (the docs listings' rule: a model's logits and a BLAS build may move the last digit).
    spec = importlib.util.spec_from_file_location("docs_rule", ROOT / "tests" / "suites" / "test_docs.py")
    docs_rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs_rule)
    # Sampled text is left out: a change in the last bits of the logits (the order of a sum) changes
    # which token a draw at temperature 1 picks, and every token after it.
    for name in sorted(drawn - {"temperature_samples.svg"}):
        same, why = docs_rule.same_output("\n".join(svg_texts(tmp_path / "book" / name)),
                                          "\n".join(svg_texts(DOCS / "images" / name)))
        assert same, f"docs/images/{name} is stale ({why}): redraw it with book_figures.py --only {name[:-4]}"
    for name in drawn:
        text = (tmp_path / "book" / name).read_text()
        assert text.lstrip().startswith("<?xml") and "</svg>" in text
    assert (tmp_path / "interp" / "attention_layer0_head0.svg").is_file()
    assert (tmp_path / "interp" / "saliency_next_token.svg").is_file()
    assert (tmp_path / "curve" / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert {p.name: p.stat().st_mtime_ns for p in (DOCS / "images").iterdir()} == before


# The figures book_figures.py draws without a model or a measurement: cheap enough to redraw on
# every run; those drawn from npgpt-small or a measurement are only drawn, by the slow test above.
DIAGRAMS = ("head_split", "residual_stream", "gelu_relu", "kv_cache", "bpe_merge_tree", "lr_schedule",
            "pipeline", "value_graph", "padded_batch", "ring_allreduce", "roofline", "serving_batching")


def svg_texts(path):
    """Every text of an SVG, in order: what a figure says, whatever version of matplotlib drew it."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(path).getroot()
    return ["".join(node.itertext()).strip() for node in root.iter("{http://www.w3.org/2000/svg}text")]


def test_the_committed_diagrams_are_what_the_script_draws_now(tmp_path):
    # A figure whose numbers or labels changed in the code (a renamed module, a new count) but was
    # not redrawn is stale: its texts differ from a fresh drawing's. The script is deterministic
    # (fixed hash salt, no date), so a fresh drawing equals the committed one.
    pytest.importorskip("matplotlib")
    with contextlib.redirect_stdout(io.StringIO()):
        assert load("book_figures").main(["--out", str(tmp_path), "--only", *DIAGRAMS]) == 0
    for name in DIAGRAMS:
        fresh, committed = svg_texts(tmp_path / f"{name}.svg"), svg_texts(DOCS / "images" / f"{name}.svg")
        assert fresh, f"{name}.svg has no text: has the SVG writer changed?"
        assert fresh == committed, (f"docs/images/{name}.svg is stale: "
                                    f"python docs/scripts/book_figures.py --out docs/images --only {name}")


def test_the_space_glyph_is_the_same_in_every_tokenizer_figure():
    # Tokens that start with a space are drawn with ␣ (U+2423) everywhere; a middle dot would read
    # as the token separator of docs/tokenizer.md's worked example.
    from npgpt import Tokenizer, viz

    assert viz.token_labels([Tokenizer.from_pretrained("npgpt-small").encode(" the cat")],
                            Tokenizer.from_pretrained("npgpt-small")) == ["\u2423the", "\u2423cat"]
    for image in ("bpe_merge_tree", "causal_mask", "sampling_filters", "attention_layer0_head0",
                  "saliency_next_token", "saliency_sentiment"):
        text = (DOCS / "images" / f"{image}.svg").read_text()
        assert "\u2423" in text and "\u00b7" not in text, image
