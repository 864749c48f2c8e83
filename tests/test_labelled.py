"""Labelled data for fine-tuning (npgpt.finetuning.labelled; docs/finetuning.md): CSV, TSV and JSONL files,
label sets, seeded splits and padded batches with their masks."""

import json

import numpy as np
import pytest

from npgpt.finetuning import labelled


# ------------------------------------------------------------------ data files
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_csv_tsv_and_jsonl_alike(tmp_path):
    csv_file = write(tmp_path / "d.csv", 'text,label\n"Great, fun film",pos\nDull.,neg\n')
    tsv_file = write(tmp_path / "d.tsv", "label\ttext\r\npos\tGreat, fun film\r\nneg\tDull.\r\n")
    jsonl_file = write(tmp_path / "d.jsonl", json.dumps({"text": "Great, fun film", "label": "pos"}) + "\n\n"
                      + json.dumps({"text": "Dull.", "label": "neg"}) + "\n")
    for path in (csv_file, tsv_file, jsonl_file):
        texts, labels = labelled.read_labelled_file(path, "text", "label")
        assert texts == ["Great, fun film", "Dull."] and labels == ["pos", "neg"], path


def test_headerless_files_use_column_numbers(tmp_path):
    path = write(tmp_path / "reviews.tsv", "1\t2.5\tA joy.\n2\t-1.0\tA bore.\n")
    texts, labels = labelled.read_labelled_file(path, 2, 1, header=False)
    assert texts == ["A joy.", "A bore."] and labels == ["2.5", "-1.0"]


def test_missing_column_is_named_with_the_columns_there_are(tmp_path):
    path = write(tmp_path / "d.csv", "sentence,label\nhi,1\n")
    with pytest.raises(KeyError, match=r"column 'text' is not in .*d\.csv; its columns are \['sentence', 'label'\]"):
        labelled.read_labelled_file(path, "text", "label")
    jsonl = write(tmp_path / "d.jsonl", '{"text": "hi"}\n')
    with pytest.raises(KeyError, match=r"line 1: no field 'label'"):
        labelled.read_labelled_file(jsonl, "text", "label")


def test_empty_text_and_empty_label_name_the_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\nfine,1\n   ,0\n")
    with pytest.raises(ValueError, match=r"line 3: empty text in column 'text'"):
        labelled.read_labelled_file(path)
    path = write(tmp_path / "e.csv", "text,label\nfine,\n")
    with pytest.raises(ValueError, match=r"line 2: empty label"):
        labelled.read_labelled_file(path)


def test_bad_format_and_bad_json_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the format .* '\.xlsx'"):
        labelled.read_labelled_file(write(tmp_path / "d.xlsx", "x"))
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        labelled.read_labelled_file(write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{oops\n'))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        labelled.read_labelled_file(tmp_path / "nope.csv")


def test_label_set_orders_numbers_numerically_and_rejects_unknown_labels():
    labels = labelled.LabelSet.infer(["10", "2", "2", "10", "-1"])
    assert labels.names == ["-1", "2", "10"]
    assert labels.encode([2, "10", "-1"]).tolist() == [1, 2, 0]
    fixed = labelled.LabelSet(["neg", "pos"])
    with pytest.raises(ValueError, match=r"label 'neutral' \(example 2 of train\.csv\) is not one of the expected "
                                         r"labels \['neg', 'pos'\]"):
        fixed.encode(["pos", "neutral"], source="train.csv")
    with pytest.raises(ValueError, match="at least two classes"):
        labelled.LabelSet(["only"])


def test_spellings_of_one_number_are_one_class_with_a_warning(tmp_path, capsys):
    """A CSV whose label column a spreadsheet wrote as 1.0 in some rows and 1 in others has two classes, not
    four: "1", "1.0", "01" and 1 are the class "1" (labelled.label_name), and the merge is reported."""
    path = tmp_path / "mixed.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{lab}\n" for i, lab in
                                              enumerate(["1", "1.0", "0", "0.0", "1", "01", "0", "1e0"] * 3)))
    texts, raw = labelled.read_labelled_file(path)
    labels = labelled.LabelSet.infer(raw)
    assert labels.names == ["0", "1"]
    assert labels.encode(raw).tolist() == [1, 1, 0, 0, 1, 1, 0, 1] * 3
    assert labels.encode([1, "1.0", 0]).tolist() == [1, 1, 0]
    counts, warnings = labelled.label_counts(raw, source="mixed.csv")
    assert counts == {"1": 15, "0": 9}
    assert "the labels '01', '1', '1.0', '1e0' of mixed.csv are one class, '1'" in warnings
    assert "the labels '0', '0.0' of mixed.csv are one class, '0'" in warnings
    assert labelled.LabelSet.infer(["0.5", "1.5", "0.50"]).names == ["0.5", "0.50", "1.5"]    # not integers: kept
    with pytest.raises(ValueError, match="distinct"):
        labelled.LabelSet(["1", "1.0"])


@pytest.mark.parametrize("null", ["NaN", "None", "null", "nan", "N/A"])
def test_labels_spelled_like_a_missing_value_are_warned(tmp_path, null):
    raw = ["pos", "neg", null] * 6
    counts, warnings = labelled.label_counts(raw, source="d.csv")
    assert counts[null] == 6
    assert f"class {null!r} (6 examples of d.csv) is spelled like a missing value: is the label column complete?" \
        in warnings
    assert not any("missing value" in w for w in labelled.label_counts(["pos", "neg"] * 6)[1])


def test_split_is_a_seeded_partition():
    train, val, test = labelled.split_indices(103, (0.8, 0.1, 0.1), seed=7)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(103))
    assert (len(train), len(val)) == (82, 10)
    again = labelled.split_indices(103, (0.8, 0.1, 0.1), seed=7)
    assert all((a == b).all() for a, b in zip((train, val, test), again))
    assert not (labelled.split_indices(103, seed=8)[0] == train).all()


def test_pad_batch_right_and_left_with_masks():
    idx, mask = labelled.pad_batch([[5, 6, 7], [8]], pad_id=9, side="right")
    assert idx.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    idx, mask = labelled.pad_batch([[5, 6, 7], [8]], pad_id=9, side="left")
    assert idx.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    idx, _ = labelled.pad_batch([[1, 2, 3, 4]], max_length=2)
    assert idx.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        labelled.pad_batch([[1], []])
