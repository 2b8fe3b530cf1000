"""TensorFlow: a dataset as a tf.data.Dataset, every sample once per pass, seeded order."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install hubdask[tf])")

import hubdask as hd  # noqa: E402


def test_tf_dataset_on_s3(s3_root):
    n = 200
    ds = hd.dataset("ml/tf", images=dict(data=np.arange(n * 6, dtype="f4").reshape(n, 2, 3), chunks=(32, 2, 3)),
                    labels=np.arange(n), storage=s3_root)
    t = ds.tensorflow(batch_size=32, shuffle=True, seed=4, return_index=True)
    assert t.element_spec["images"].shape.as_list() == [None, 2, 3]
    first = []
    for batch in t:
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["labels"].numpy(), idx)
        np.testing.assert_array_equal(batch["images"].numpy()[:, 0, 0], idx * 6)
        first += idx.tolist()
    assert sorted(first) == list(range(n)) and first != sorted(first)
    same = [int(i) for b in ds.tensorflow(batch_size=32, shuffle=True, seed=4, return_index=True) for i in b["index"]]
    assert same == first
    plain = [int(s["labels"]) for s in ds.tensorflow(keys=["labels"])]
    assert plain == list(range(n))
