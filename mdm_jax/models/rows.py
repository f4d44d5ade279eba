"""Which rows of a batch a level runs on under a mixed ratio, group by group.

A mixed ratio trains the higher levels on part of the batch. The reference takes the
batch's first rows. With the batch split over devices (contiguous blocks of rows, one
per device), the first rows sit on the first devices, and XLA's partitioner gathers and
moves activations to compute them (docs/performance.md measures it). So the batch is
seen as `groups` contiguous blocks, one per device (and per micro-batch), and a level
runs on the first rows of every block: each device keeps its share, with no data moved.
One group is the reference's truncation. (The loss, in mdm_jax.diffusion, which may not
import this package, selects its rows the same way.)

Row counts are Python ints (static under jit); `x` may hold clips' frames as rows (video
levels), counted in units of `per_row` rows each.
"""
import jax.numpy as jnp


def _check_groups(rows, groups):
    if rows % groups:
        raise ValueError(f"{rows} rows can't be split into {groups} equal groups.")


def first_rows(x, rows, groups=1, per_row=1):
    """The first rows // groups rows of each of `groups` equal blocks of x: [rows, ...]."""
    if groups == 1:
        return x[:rows * per_row]
    _check_groups(x.shape[0], groups * per_row)
    _check_groups(rows, groups)
    blocks = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    return blocks[:, :rows // groups * per_row].reshape((rows * per_row,) + x.shape[1:])


def pad_rows(x, rows, groups=1, per_row=1):
    """The inverse placement: x's groups (blocks) each padded with zero rows at their end,
    to `rows` rows in all (the rows a level skipped, in the lower level's batch)."""
    pad = rows * per_row - x.shape[0]
    if groups == 1:
        return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    _check_groups(x.shape[0], groups * per_row)
    _check_groups(rows, groups)
    blocks = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
    padded = jnp.pad(blocks, ((0, 0), (0, pad // groups)) + ((0, 0),) * (x.ndim - 1))
    return padded.reshape((rows * per_row,) + x.shape[1:])
