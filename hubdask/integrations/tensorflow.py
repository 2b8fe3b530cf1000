"""TensorFlow: a dataset as a ``tf.data.Dataset`` of dicts of tensors (optional extra ``hubdask[tf]``).

The samples come from the same stream as the PyTorch face (stream.py): whole chunks read ahead in
threads, blocks in order or shuffled by block plus a bounded buffer. Each pass over the tf.data.Dataset
is one epoch; with ``seed`` the k-th pass has a fixed order (reproducible runs), without it every pass
is freshly shuffled. ``shard=(index, count)`` gives one input pipeline per host its share of every
epoch, as a rank of a PyTorch job gets (the same number of samples on every shard: padded by wrapping,
or cut with ``drop_last``), without reading the other shards' blocks.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf

from hubdask.integrations.stream import INDEX_KEY, Share, make_plan, serve, worker_draws


def tf_dataset(ds: Any, batch_size: int | None = None, shuffle: bool = False, seed: int | None = None, *,
               keys: Any = None, buffer_size: int = 2048, prefetch: int = 4, return_index: bool = False,
               drop_last: bool = False, shard: tuple[int, int] = (0, 1), block_rows: int | None = None) -> tf.data.Dataset:
    """A tf.data.Dataset over ``ds`` (an hd.Dataset) at its current state (pinned: later writes are not seen)."""
    plan = make_plan(ds, keys, block_rows)
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"dataset {plan.name!r}: shard must be (index, count) with 0 <= index < count, got {shard}")
    epochs = itertools.count()

    def generate():
        epoch = next(epochs)
        if seed is not None:
            order_seed: tuple[int, ...] | None = (int(seed), epoch)
        elif shuffle:
            order_seed = (int(np.random.SeedSequence().entropy % 2**63),)
        else:
            order_seed = None
        share = Share(order_seed, shuffle, index, count, 1, batch_size, buffer_size, drop_last)
        for item in serve(plan, worker_draws(plan, share, 0), prefetch, return_index, None, buffer_size if shuffle else 0):
            if batch_size is not None:
                yield item
                continue
            for i in range(len(item[INDEX_KEY if return_index else next(iter(plan.sources))])):
                yield {k: v[i] for k, v in item.items()}

    lead = (None,) if batch_size is not None else ()
    signature = {k: tf.TensorSpec(lead + tuple(plan.shapes[k][1:]), tf.as_dtype(plan.dtypes[k]))
                 for k in plan.sources}
    if return_index:
        signature[INDEX_KEY] = tf.TensorSpec(lead, tf.int64)
    return tf.data.Dataset.from_generator(generate, output_signature=signature)
