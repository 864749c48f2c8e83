"""Fine-tuning: data files, label sets, splits, padding, metrics, the loop and the CLI."""

import json

import numpy as np
import pytest

from npgpt import finetune


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
        texts, labels = finetune.read_labelled_file(path, "text", "label")
        assert texts == ["Great, fun film", "Dull."] and labels == ["pos", "neg"], path


def test_headerless_files_use_column_numbers(tmp_path):
    path = write(tmp_path / "reviews.tsv", "1\t2.5\tA joy.\n2\t-1.0\tA bore.\n")
    texts, labels = finetune.read_labelled_file(path, 2, 1, header=False)
    assert texts == ["A joy.", "A bore."] and labels == ["2.5", "-1.0"]


def test_missing_column_is_named_with_the_columns_there_are(tmp_path):
    path = write(tmp_path / "d.csv", "sentence,label\nhi,1\n")
    with pytest.raises(KeyError, match=r"column 'text' is not in .*d\.csv; its columns are \['sentence', 'label'\]"):
        finetune.read_labelled_file(path, "text", "label")
    jsonl = write(tmp_path / "d.jsonl", '{"text": "hi"}\n')
    with pytest.raises(KeyError, match=r"line 1: no field 'label'"):
        finetune.read_labelled_file(jsonl, "text", "label")


def test_empty_text_and_empty_label_name_the_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\nfine,1\n   ,0\n")
    with pytest.raises(ValueError, match=r"line 3: empty text in column 'text'"):
        finetune.read_labelled_file(path)
    path = write(tmp_path / "e.csv", "text,label\nfine,\n")
    with pytest.raises(ValueError, match=r"line 2: empty label"):
        finetune.read_labelled_file(path)


def test_bad_format_and_bad_json_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the format .* '\.xlsx'"):
        finetune.read_labelled_file(write(tmp_path / "d.xlsx", "x"))
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        finetune.read_labelled_file(write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{oops\n'))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finetune.read_labelled_file(tmp_path / "nope.csv")


def test_label_set_orders_numbers_numerically_and_rejects_unknown_labels():
    labels = finetune.LabelSet.infer(["10", "2", "2", "10", "-1"])
    assert labels.names == ["-1", "2", "10"]
    assert labels.encode([2, "10", "-1"]).tolist() == [1, 2, 0]
    fixed = finetune.LabelSet(["neg", "pos"])
    with pytest.raises(ValueError, match=r"label 'neutral' \(example 2 of train\.csv\) is not one of the expected "
                                         r"labels \['neg', 'pos'\]"):
        fixed.encode(["pos", "neutral"], source="train.csv")
    with pytest.raises(ValueError, match="at least two classes"):
        finetune.LabelSet(["only"])


def test_split_is_a_seeded_partition():
    train, val, test = finetune.split_indices(103, (0.8, 0.1, 0.1), seed=7)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(103))
    assert (len(train), len(val)) == (82, 10)
    again = finetune.split_indices(103, (0.8, 0.1, 0.1), seed=7)
    assert all((a == b).all() for a, b in zip((train, val, test), again))
    assert not (finetune.split_indices(103, seed=8)[0] == train).all()


def test_pad_batch_right_and_left_with_masks():
    idx, mask = finetune.pad_batch([[5, 6, 7], [8]], pad_id=9, side="right")
    assert idx.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    idx, mask = finetune.pad_batch([[5, 6, 7], [8]], pad_id=9, side="left")
    assert idx.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    idx, _ = finetune.pad_batch([[1, 2, 3, 4]], max_length=2)
    assert idx.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        finetune.pad_batch([[1], []])


# --------------------------------------------------------------------- metrics
def test_metrics_match_hand_counts():
    # docs/finetuning.md eqs. 9, 10 and 11: precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R).
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 0, 0, 1, 0, 1]
    m = finetune.classification_metrics(y_true, y_pred, num_classes=2, label_names=["neg", "pos"])
    tp, fp, fn = 3, 1, 1
    assert m["confusion"].tolist() == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    p, r = m["precision"], m["recall"]
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["per_class"]["neg"]["support"] == 4
    text = finetune.format_metrics(m)
    assert "accuracy 0.750" in text and "pos" in text


def test_multiclass_metrics_are_macro_averages_and_zero_safe():
    m = finetune.classification_metrics([0, 1, 2, 2], [0, 2, 2, 2], num_classes=3)
    # class 1 is never predicted: its precision is 0 by convention, not NaN
    assert m["per_class"]["1"]["precision"] == 0.0
    assert m["precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["recall"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["confusion"].sum() == 4
