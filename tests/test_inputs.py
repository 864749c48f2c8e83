"""Checked inputs (npgpt.io.inputs): token ids, positions and masks are checked once, at the public
entry points of the model, with errors that name the problem; the trunk trusts them."""

import numpy as np
import pytest
from test_model import ids, tiny


def test_input_validation():
    model = tiny()
    with pytest.raises(TypeError, match="integers, got dtype float"):
        model(ids().astype(np.float32))
    with pytest.raises(ValueError, match="token id 61 is out of range"):
        model(np.array([[0, 61]]))
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        model(np.array([[-1, 3]]))
    with pytest.raises(ValueError, match=r"2-D \(batch, time\).*ids\[None\]"):
        model(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="sequence length 17 .* exceeds block_size 16"):
        model(ids(T=17))
    with pytest.raises(ValueError, match="empty"):
        model(np.zeros((1, 0), np.int64))
    assert model([[1, 2, 3]]).shape == (1, 3, 61)        # nested lists are fine


def test_the_entry_points_check_their_inputs_once_and_the_trunk_trusts_them(monkeypatch):
    from npgpt.io import inputs

    model = tiny()
    x, y = ids(), ids()
    checked = []
    real = inputs.check_token_ids
    monkeypatch.setattr(inputs, "check_token_ids", lambda *a, **k: checked.append(1) or real(*a, **k))
    model(x)
    assert len(checked) == 1                             # once, at the boundary; the embeddings trust it
    model.loss(x, y)
    assert len(checked) == 2
    model.trunk(x)
    assert len(checked) == 2
    with pytest.raises(ValueError, match="position_ids of shape"):
        model(x, position_ids=np.arange(3))
    with pytest.raises(ValueError, match="position id 16 is out of range"):
        model(x, position_ids=np.arange(7) + 10)
    with pytest.raises(ValueError, match="inputs_embeds of shape"):
        model(x, inputs_embeds=np.zeros((2, 7, 3), np.float32))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 6\)"):
        model(x, attention_mask=np.ones((2, 6), np.int64))
    with pytest.raises(ValueError, match="token id 99 is out of range"):
        model.loss(np.full((1, 3), 99), np.zeros((1, 3), np.int64))
