"""MkDocs hook: keep the book's navigation in step with the chapters that exist, serve MathJax,
link each chapter to its edition in the other language (English | 中文), and number the
equations in reading order.

``mkdocs.yml`` lists every chapter in reading order, including chapters that another engineer
may still be writing. A nav entry whose file does not exist would make ``mkdocs build
--strict`` fail, so this hook drops such entries (logging them) before the build; as soon as
the file lands, it appears at its place in the book. The opposite mistake, a page in docs/
that the nav forgets, is caught by ``tests/suites/test_site.py``.
"""

import logging
import pathlib

log = logging.getLogger("mkdocs.hooks.npgpt")


def _prune(items, docs_dir):
    kept = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                value = _prune(value, docs_dir)
                if value:
                    kept.append({title: value})
            elif isinstance(value, str) and value.endswith(".md") and not (docs_dir / value).exists():
                log.info("nav: %s (%s) is not written yet; left out of this build", title, value)
            else:
                kept.append(item)
        elif isinstance(item, str) and item.endswith(".md") and not (docs_dir / item).exists():
            log.info("nav: %s is not written yet; left out of this build", item)
        else:
            kept.append(item)
    return kept


def on_config(config):
    config.markdown_extensions.append(EquationAnchors())
    if config.nav:
        config.nav = _prune(config.nav, pathlib.Path(config.docs_dir))
    if mathjax_dir() is None:
        log.info("MathJax: django-static-mathjax is not installed; the pages load MathJax from %s", MATHJAX_CDN)
        config.extra_javascript = _use_cdn(config.extra_javascript)
    return config


# ------------------------------------------------------------------ English | 中文
# The Chinese edition of the book's core lives in docs/zh/, one page per English chapter of the
# same file name (docs/zh/model.md is the edition of docs/model.md). The readthedocs theme has no
# language switch of its own, so this hook writes one under the title of every page that has an
# edition in the other language. It is an ordinary markdown link: the strict build checks it like
# any other, so a switch can never point at a page that does not exist.
ZH = "zh/"


def language_switch(src_uri, docs_dir):
    """The switch line for the page ``src_uri`` (e.g. ``"model.md"``, ``"zh/model.md"``), or None."""
    docs_dir = pathlib.Path(docs_dir)
    if src_uri.startswith(ZH):
        english = src_uri[len(ZH):]
        if (docs_dir / english).is_file():
            return f"[English](../{english}) · **中文**"
    elif "/" not in src_uri and (docs_dir / ZH / src_uri).is_file():
        return f"**English** · [中文]({ZH}{src_uri})"
    return None


def on_page_markdown(markdown, page, config, files):
    markdown = number_equations(markdown, page.file.src_uri, config.docs_dir)
    switch = language_switch(page.file.src_uri, config.docs_dir)
    if switch is None:
        return markdown
    title, _, rest = markdown.partition("\n")
    if not title.startswith("# "):                     # no title line: the switch goes first
        return f"{switch}\n{{: .language-switch }}\n\n{markdown}"
    return f"{title}\n\n{switch}\n{{: .language-switch }}\n\n{rest.lstrip(chr(10))}"


# ------------------------------------------------------------------ MathJax, served by the site
# The equations are typeset by MathJax 3 in the reader's browser. The site serves its own copy,
# so the book reads offline: MathJax's release files come from the PyPI package
# django-static-mathjax (MathJax 3.2.2, Apache-2.0; it installs the package ``mathjax`` with
# MathJax's files under static/mathjax/ and depends on nothing, Django included), listed in the
# dev extra. After each build the hook copies its es5/ directory into the site's
# javascripts/mathjax/, which mkdocs.yml's extra_javascript names. Without the package (a
# checkout that skipped the dev extra) the page loads the same MathJax from a CDN instead, and the
# build says so: the site still builds, but then needs the network to show equations.
MATHJAX_LOCAL = "javascripts/mathjax/tex-mml-chtml.js"
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-mml-chtml.js"


def mathjax_dir():
    """MathJax's es5/ directory as django-static-mathjax installs it, or None."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    for location in (spec.submodule_search_locations or []) if spec else []:
        es5 = pathlib.Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    return None


def _use_cdn(scripts):
    """``scripts`` with the local MathJax replaced by the CDN's (entries may be str or ExtraScriptValue)."""
    return [MATHJAX_CDN if str(getattr(s, "path", s)) == MATHJAX_LOCAL else s for s in scripts]


def on_post_build(config):
    es5 = mathjax_dir()
    if es5 is not None:
        import shutil

        shutil.copytree(es5, pathlib.Path(config.site_dir) / "javascripts" / "mathjax", dirs_exist_ok=True)


# ------------------------------------------------------------------ equations, numbered in reading order
# The source names each numbered equation, ``$$ ... \label{eq:causal-mask} $$``, and refers to it
# by name, ``[eq. causal-mask](model.md#eq-causal-mask)`` (docs/scripts/equations.py has the
# rules; tests/suites/test_equations.py enforces them). At build time the n-th label of a page
# becomes ``\tag{n}``, each link's text shows the number instead of the name ("eq. 5"), and the
# display's element gets the id ``eq-causal-mask`` that the links point at. The strict build
# checks those anchors like any other, so a link to a name that does not exist fails the build.
def _equations_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("npgpt_book_equations", pathlib.Path(__file__).with_name("equations.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EQUATIONS = _equations_module()


def _numbers_of(path):
    """{name: number} of the page at ``path`` (a pathlib.Path), or {} where there is no such page."""
    if not path.is_file():
        return {}
    return _EQUATIONS.numbers(path.read_text(encoding="utf-8"), path.stem)


def number_equations(markdown, src_uri, docs_dir):
    """``markdown`` of the page ``src_uri`` with ``\\tag{n}`` before each ``\\label{eq:...}``, the
    number for each ``\\ref{eq:...}`` inside a display (maths cannot hold a link), and each equation
    link's text showing the number where it shows the name."""
    import posixpath
    import re

    docs_dir = pathlib.Path(docs_dir)
    own = _EQUATIONS.numbers(markdown, src_uri[:-3])
    for start, body, _ in reversed(_EQUATIONS.displays(markdown, src_uri[:-3])):
        end = start + len(body) + 4
        tagged = _EQUATIONS.LABEL.sub(lambda m: f"\\tag{{{own[m.group(1)[3:]]}}}{m.group()}", markdown[start:end])
        tagged = _EQUATIONS.REF.sub(lambda m: str(own.get(m.group(1), m.group())), tagged)
        tagged = _EQUATIONS.NOTAG.sub("", tagged)        # unnumbered: MathJax numbers nothing anyway
        markdown = markdown[:start] + tagged + markdown[end:]
    here = posixpath.dirname(src_uri)

    def link(match):
        text, target, name = match.groups()
        found = own if not target else _numbers_of(docs_dir / posixpath.normpath(posixpath.join(here, target)))
        if name not in found:
            return match.group()                      # the strict build reports the missing anchor
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", str(found[name]), text)
        return f"[{text}]({target}#eq-{name})"

    return _EQUATIONS.LINK.sub(link, markdown)


def _equation_anchors_class():
    import re

    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor
    from markdown.util import AtomicString

    label = re.compile(r"\\label\{eq:([a-z0-9-]+)\}")

    class Anchors(Treeprocessor):
        """Moves each display's ``\\label{eq:name}`` out of the maths into the element's id."""

        def run(self, root):
            for element in root.iter():
                if "arithmatex" in (element.get("class") or "").split() and element.text:
                    match = label.search(element.text)
                    if match:
                        element.set("id", f"eq-{match.group(1)}")
                        element.text = AtomicString(label.sub("", element.text))

    class EquationAnchors(Extension):
        def extendMarkdown(self, md):
            # After arithmatex's inline pattern (the inline treeprocessor, 20), before mkdocs
            # collects the page's anchors (5), so that links to #eq-name validate.
            md.treeprocessors.register(Anchors(md), "npgpt_equation_anchors", 8)

    return EquationAnchors


EquationAnchors = _equation_anchors_class()
