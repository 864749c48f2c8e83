"""The book builds as a site: ``mkdocs build --strict`` passes, every page is in the nav, the
architecture diagram is current.

The strict build fails on any warning: a broken link or anchor between chapters, a page that
the nav forgets, a nav entry for a missing file that the hook did not drop. It needs no network,
and the site it writes serves MathJax itself (the hook copies it from django-static-mathjax).
"""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(items):
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def _config():
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)   # mkdocs' !ENV tags etc.
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def _build(config, site_dir):
    """``mkdocs build --strict`` (not ``-q``: quiet mode hides warnings from the strict count)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site_dir)],
                          capture_output=True, text=True, cwd=pathlib.Path(config).parent, timeout=300)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("pymdownx")
    proc = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    assert (site / "index.html").exists() if (DOCS / "index.md").exists() else True
    model = (site / "model.html").read_text()
    assert 'class="arithmatex"' in model and "\\tag{4}" in model, "equations are not handed to MathJax"
    # numbered by the hook in reading order, the name moved out of the maths into the anchor
    assert 'id="eq-causal-mask"' in model and "\\label{" not in model, "equations are not numbered by name"
    equations = _load("equations", DOCS / "scripts" / "equations.py")
    for page, name in equations.equations():                  # every equation typeset, with its anchor
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        assert f'class="arithmatex" id="eq-{name}"' in html, f"docs/{page}.md eq:{name} is not typeset as a display"
    assert not (site / "scripts").exists(), "docs/scripts/ must not be published"
    for page in sorted((DOCS / "zh").glob("*.md")):             # the switch, both ways, on the built pages
        assert f'href="../{page.stem}.html"' in (site / "zh" / f"{page.stem}.html").read_text(encoding="utf-8")
        assert f'href="zh/{page.stem}.html"' in (site / f"{page.stem}.html").read_text(encoding="utf-8")


def test_every_page_is_in_the_nav_once():
    config = _config()
    listed = list(_nav_pages(config["nav"]))
    assert len(listed) == len(set(listed)), "a page appears twice in the nav"
    not_in_nav = set((config.get("not_in_nav") or "").split())
    pages = {p.name for p in DOCS.glob("*.md")} | {f"zh/{p.name}" for p in (DOCS / "zh").glob("*.md")}
    missing = sorted(pages - set(listed) - not_in_nav)
    assert not missing, f"pages in docs/ that mkdocs.yml's nav does not list: {missing}"


def test_nav_entries_for_missing_pages_are_dropped_by_the_hook(tmp_path):
    hooks = _load("mkdocs_hooks", DOCS / "scripts" / "mkdocs_hooks.py")
    (tmp_path / "here.md").write_text("# here\n")
    nav = [{"Home": "here.md"}, {"Part": [{"A": "missing.md"}, {"B": "here.md"}]}, {"Gone": [{"C": "nope.md"}]}]
    assert hooks._prune(nav, tmp_path) == [{"Home": "here.md"}, {"Part": [{"B": "here.md"}]}]


def test_architecture_diagram_is_current():
    diagram = _load("architecture_diagram", DOCS / "scripts" / "architecture_diagram.py")
    assert (DOCS / "images" / "architecture.svg").read_text() == diagram.render(), \
        "docs/images/architecture.svg is out of date: run python docs/scripts/architecture_diagram.py"


def test_architecture_diagram_shows_every_stage_in_order():
    svg = (DOCS / "images" / "architecture.svg").read_text()
    stages = ["token + position embeddings", "LayerNorm ln_1", "causal self-attention", "+",
              "LayerNorm ln_2", "MLP", "+", "LayerNorm ln_f", "tied head", "softmax"]
    position = 0
    for stage in stages:
        found = svg.find(f">{stage}", position)
        assert found > 0, f"{stage!r} missing or out of order in the diagram"
        position = found + 1
    assert "x 12 blocks" in svg


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    # The check above must be able to fail: a link to a page that does not exist aborts the build.
    pytest.importorskip("mkdocs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the missing chapter](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nnav:\n  - index.md\n")
    proc = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0 and "missing.md" in proc.stdout + proc.stderr


def test_the_site_serves_mathjax_itself(tmp_path):
    # The book reads offline: MathJax comes from the site (django-static-mathjax, the dev extra).
    pytest.importorskip("mkdocs")
    pytest.importorskip("pymdownx")
    hooks = _load("mkdocs_hooks", DOCS / "scripts" / "mkdocs_hooks.py")
    if hooks.mathjax_dir() is None:
        pytest.skip("django-static-mathjax is not installed (pip install -e '.[dev]')")
    proc = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    assert (site / hooks.MATHJAX_LOCAL).is_file()
    assert (site / "javascripts" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    model = (site / "model.html").read_text()
    assert hooks.MATHJAX_LOCAL in model and "cdn.jsdelivr.net" not in model


def test_without_the_mathjax_package_the_pages_use_the_cdn():
    hooks = _load("mkdocs_hooks", DOCS / "scripts" / "mkdocs_hooks.py")
    scripts = ["javascripts/mathjax.js", hooks.MATHJAX_LOCAL]
    assert hooks._use_cdn(scripts) == ["javascripts/mathjax.js", hooks.MATHJAX_CDN]
    assert hooks.MATHJAX_LOCAL in (ROOT / "mkdocs.yml").read_text()


# ------------------------------------------------------------------ the Chinese edition
ZH_PAGES = sorted((DOCS / "zh").glob("*.md"))


@pytest.mark.parametrize("page", ZH_PAGES, ids=[p.name for p in ZH_PAGES])
def test_a_chinese_page_shares_its_equations_with_the_english_page_by_label(page):
    """An equation of docs/zh/X.md is the one of docs/X.md with the same name, character for character, so one test checks both
    and the equation index (which lists the English pages) covers the Chinese ones."""
    equations = _load("equations", DOCS / "scripts" / "equations.py")
    english = DOCS / page.name
    assert english.is_file(), f"docs/zh/{page.name} has no English edition docs/{page.name}"
    zh = equations.page_equations(page.read_text(encoding="utf-8"), f"zh/{page.stem}")
    en = equations.page_equations(english.read_text(encoding="utf-8"), page.stem)
    for name, latex in zh.items():
        assert en.get(name) == latex, f"docs/zh/{page.name} eq:{name} is not docs/{page.name} eq:{name}"


def test_the_language_switch_links_each_pair_of_editions(tmp_path):
    hooks = _load("mkdocs_hooks", DOCS / "scripts" / "mkdocs_hooks.py")
    (tmp_path / "zh").mkdir()
    for name in ("model.md", "zh/model.md", "gpu.md"):
        (tmp_path / name).write_text("# t\n")
    assert hooks.language_switch("model.md", tmp_path) == "**English** · [中文](zh/model.md)"
    assert hooks.language_switch("zh/model.md", tmp_path) == "[English](../model.md) · **中文**"
    assert hooks.language_switch("gpu.md", tmp_path) is None                 # no Chinese edition: no switch

    class Page:
        class file:
            src_uri = "zh/model.md"

    class Config:
        docs_dir = str(tmp_path)

    out = hooks.on_page_markdown("# 标题\n\n正文\n", Page, Config, None)
    assert out == "# 标题\n\n[English](../model.md) · **中文**\n{: .language-switch }\n\n正文\n"
