"""MkDocs hook: keep the book's navigation in step with the chapters that exist, serve MathJax,
and link each chapter to its edition in the other language (English | 中文).

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
