"""Training the shapes judge (the command is python -m mdm_jax.train_judge).

Renders one-shape scenes at 64² (shapes_render, seeds apart from any data set's), trains
JudgeNet on every attribute with AdamW, measures it on held-out scenes of another seed and
writes the checkpoint with those accuracies in its metadata. The package ships the result
as mdm_jax/evaluation/shapes_judge.npz, trained on one H200 in about 2 minutes (rendering
included); on a 2-core CPU it would take hours.
"""
import functools
import multiprocessing
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mdm_jax.data import shapes_render
from mdm_jax.evaluation import judge as judge_lib

TRAIN_SEED = 1_000_001  # far from the data sets' seeds (0 by default)
HELD_OUT_SEED = 1_000_002


def render_scenes(seed, count, processes=None):
    """(images uint8 [count, 64, 64, 3], {attribute: int32 [count]}) of one-shape scenes."""
    make = functools.partial(_render_one, seed=seed)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rendered = pool.map(make, range(count), chunksize=64)
    images = np.stack([r[0] for r in rendered])
    labels = {k: np.asarray([r[1][k] for r in rendered], np.int32) for k in judge_lib.ATTRIBUTES}
    return images, labels


def _render_one(index, *, seed):
    scene = shapes_render.sample_scene(seed, index, max_objects=1)
    return (shapes_render.render(scene, judge_lib.IMAGE_SIZE),
            judge_lib.scene_attributes(scene))


def _augment(key, images):
    """Gaussian pixel noise of a random strength per image: samples are rarely as clean as
    the rendered scenes, and the judge should not hinge on perfect edges."""
    strength_key, noise_key = jax.random.split(key)
    sigma = jax.random.uniform(strength_key, (images.shape[0], 1, 1, 1), maxval=0.05)
    return images + sigma * jax.random.normal(noise_key, images.shape)


def train(num_train=50_000, num_held_out=2_000, steps=8_000, batch_size=128,
          learning_rate=2e-3, seed=0, processes=None):
    """(params, {attribute: held-out accuracy, "all": every attribute right})."""
    images, labels = render_scenes(TRAIN_SEED, num_train, processes)
    net = judge_lib.JudgeNet()
    params = jax.jit(net.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))["params"]
    warmup = min(100, steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup,
                                                  max(steps, warmup + 1))
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key, x, y):
        def loss_fn(p):
            logits, _ = net.apply({"params": p}, _augment(key, judge_lib.to_judge_input(x)))
            return sum(optax.softmax_cross_entropy_with_integer_labels(logits[k], y[k]).mean()
                       for k in logits)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    start = time.time()
    for i in range(steps):
        rows = rng.integers(0, num_train, batch_size)
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i),
                                       images[rows], {k: v[rows] for k, v in labels.items()})
        if (i + 1) % 250 == 0:
            logging.info("step %d/%d loss %.4f (%.0f s)", i + 1, steps, float(loss),
                         time.time() - start)
    return params, held_out_accuracy(params, num_held_out, processes)


def held_out_accuracy(params, count, processes=None):
    """Accuracy per attribute, and of all at once, on scenes the judge never saw."""
    images, labels = render_scenes(HELD_OUT_SEED, count, processes)
    predictions, _ = judge_lib.Judge(params).predict(images)
    wanted = [{k: int(v[i]) for k, v in labels.items()} for i in range(count)]
    return judge_lib.agreement(predictions, wanted)


