"""TensorFlow: a dataset as a ``tf.data.Dataset`` of dicts of tensors (optional extra ``hubdask[tf]``).

The samples come from the same stream as the PyTorch face (stream.py): whole chunks read ahead in
threads, blocks in order or shuffled by block plus a bounded buffer. Each pass over the tf.data.Dataset
is one epoch; with ``seed`` the k-th pass has a fixed order (reproducible runs), without it every pass
is freshly shuffled. ``shard=(index, count)`` reads only every count-th block (one input pipeline per
host), as ``tf.data.Dataset.shard`` would but without reading the other blocks.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf

from hubdask.integrations.stream import INDEX_KEY, block_order, make_plan, my_blocks, stream


def tf_dataset(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None, *,
               keys: Any = None, buffer_size: int = 2048, prefetch: int = 2, return_index: bool = False,
               drop_last: bool = False, shard: tuple[int, int] = (0, 1), block_rows: int | None = None) -> tf.data.Dataset:
    """A tf.data.Dataset over ``ds`` (an hd.Dataset) at its current state (pinned: later writes are not seen)."""
    plan = make_plan(ds, keys, block_rows)
    index, count = shard
    epochs = itertools.count()

    def generate():
        epoch = next(epochs)
        order_seed = [int(seed), epoch] if seed is not None else None
        if order_seed is None:
            order_seed = [int(np.random.SeedSequence().entropy % 2**63)]
        blocks = my_blocks(block_order(plan, shuffle, order_seed), index, count)
        yield from stream(plan, blocks, batch_size=batch_size, shuffle=shuffle, buffer_size=buffer_size,
                          rng=np.random.default_rng(order_seed + [index]), prefetch=prefetch,
                          return_index=return_index, drop_last=drop_last)

    lead = (None,) if batch_size is not None else ()
    signature = {k: tf.TensorSpec(lead + tuple(plan.shapes[k][1:]), tf.as_dtype(plan.dtypes[k]))
                 for k in plan.sources}
    if return_index:
        signature[INDEX_KEY] = tf.TensorSpec(lead, tf.int64)
    return tf.data.Dataset.from_generator(generate, output_signature=signature)
