"""The scripts in docs/scripts/ that draw pictures write where the user says, and nowhere else.

``loss_curve.py`` and ``interpretability_images.py`` draw from a run or a model the user chooses;
their output used to default to the tracked docs/images/, so plotting one's own run silently
replaced the book's figure. ``--out`` is now required. (The generators of api.md, equations.md and
architecture.svg are different: what they write is a function of the repository alone, and the
tests check that the committed file equals it.)
"""

import contextlib
import importlib.util
import io
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "docs" / "scripts"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv", [("loss_curve", ["run"]), ("interpretability_images", [])])
def test_picture_scripts_refuse_to_run_without_an_output_path(name, argv):
    images = {p.name: p.stat().st_mtime_ns for p in (ROOT / "docs" / "images").iterdir()}
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
        load(name).main(argv)
    assert exit_info.value.code == 2
    assert "--out" in err.getvalue()
    assert {p.name: p.stat().st_mtime_ns for p in (ROOT / "docs" / "images").iterdir()} == images


def test_the_docs_give_every_picture_script_its_output_path():
    # Each command in the book that runs a picture script names where it writes.
    for page in [*(ROOT / "docs").glob("*.md"), *SCRIPTS.glob("*.py")]:
        for line in page.read_text().splitlines():
            if "loss_curve.py " in line or "interpretability_images.py " in line:
                if line.strip().startswith("python "):
                    assert "--out" in line, f"{page.name}: {line.strip()}"
