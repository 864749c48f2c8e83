"""MkDocs hook: keep the book's navigation in step with the chapters that exist.

``mkdocs.yml`` lists every chapter in reading order, including chapters that another engineer
may still be writing. A nav entry whose file does not exist would make ``mkdocs build
--strict`` fail, so this hook drops such entries (logging them) before the build; as soon as
the file lands, it appears at its place in the book. The opposite mistake, a page in docs/
that the nav forgets, is caught by ``tests/test_site.py``.
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
    return config
