"""One pure training step: loss over all levels, gradients (accumulated over micro-batches
when asked), a guarded update, EMA.

`make_train_step` closes over the static parts (model, diffusion settings, optimizer);
the returned `train_step(state, batch, rng, frozen)` is what the loop jits once, with
in/out shardings and the state donated. The loss's pyramid and noise are made on device.
"""
import jax
import jax.numpy as jnp

from mdm_jax import diffusion
from mdm_jax.conditioning.text import no_text
from mdm_jax.models import config as model_config_lib
from mdm_jax.training.update import global_norm, make_update


def make_train_step(model, diffusion_config, scales, optimizer, learning_rate_fn, ema_decay,
                    text_fn=no_text, gradient_accumulation_steps=1, batch_shards=1):
    """Builds train_step(state, batch, rng, frozen) -> (state, metrics).

    optimizer: a `runs.state.ClippedOptimizer` (`make_optimizer`), applied leaf by leaf
    with the EMA and the non-finite guard (training/update.py).

    text_fn(trainable_params, frozen_params, batch) -> (lm_outputs, lm_mask) turns the
    batch's text into the denoiser's conditioning (a trainable encoder's params live in
    state.params beside 'unet'; a frozen encoder's come in `frozen`).

    batch_shards: the blocks the batch is split into over the mesh (its data x fsdp
    devices). Under a mixed ratio each level runs on the first rows of every block, so
    that no device waits for another's rows (models/rows.py).

    With gradient_accumulation_steps=k the batch's gradient is the sum of k micro-batches'
    (a lax.scan, so activations of one micro-batch at a time): micro-batch m is the m-th
    k-th of every shard's block, taken where it lies. The loss's times and noise are drawn
    for the whole batch and each micro-batch's summed loss is divided by the whole batch's
    weight, so the gradient equals the whole batch's with batch_shards * k row groups.
    """
    scales = tuple(scales)
    frame_ratios = model_config_lib.nest_frame_ratios(model.model)  # None for images
    uses_labels = model.model.num_classes > 0
    accumulate = gradient_accumulation_steps

    def loss_fn(params, batch, times, noises, dropout_rng, frozen, total_weight):
        """The batch's share of the loss: its weighted loss sum over `total_weight`."""
        images = batch["images"].astype(jnp.float32)
        lm_outputs, lm_mask = text_fn(params, frozen, batch)
        extra = {"class_labels": batch["labels"]} if uses_labels else {}
        micros = {"scale": batch["scale"]} if "scale" in batch else {}

        def denoise(xs, t, lm, mask, micro, **kwargs):
            return model.apply({"params": params["unet"]}, xs, t, lm, mask, micro,
                               deterministic=False, rngs={"dropout": dropout_rng}, **kwargs)

        per_example, aux = diffusion.multires_loss(
            denoise, images, times, noises, config=diffusion_config, scales=scales,
            lm_outputs=lm_outputs, lm_mask=lm_mask, micros=micros, frame_ratios=frame_ratios,
            row_groups=batch_shards, **extra)
        return jnp.sum(per_example * aux["example_weight"]) / total_weight, aux["mse"]

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def loss_and_grads(params, batch, rng, frozen):
        noise_rng, dropout_rng = jax.random.split(rng)
        times, noises = diffusion.sample_loss_noise(
            noise_rng, batch["images"], scales, diffusion_config.num_diffusion_steps,
            frame_ratios)
        # = diffusion.batch_loss's denominator over the whole batch.
        total_weight = jnp.sum(diffusion.example_weights(diffusion_config, times))
        if accumulate == 1:
            return grad_fn(params, batch, times, noises, dropout_rng, frozen, total_weight)
        size = batch["images"].shape[0]
        part = size // (batch_shards * accumulate)  # rows of one shard's micro-batch

        def split(x):  # [B, ...] -> [k, B / k, ...]: every shard's m-th part, in place
            parts = x.reshape((batch_shards, accumulate, part) + x.shape[1:])
            return jnp.swapaxes(parts, 0, 1).reshape((accumulate, size // accumulate)
                                                     + x.shape[1:])

        def join(x):  # the inverse of split, for per-row values [k, B / k]
            parts = x.reshape((accumulate, batch_shards, part))
            return jnp.swapaxes(parts, 0, 1).reshape(size)
        micro = jax.tree_util.tree_map(split, (batch, times, noises))

        def one(carry, inputs):
            index, (b, t, n) = inputs
            (loss, mse), grads = grad_fn(params, b, t, n, jax.random.fold_in(dropout_rng, index),
                                         frozen, total_weight)
            loss_sum, grad_sum = carry
            return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), mse
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (loss, grads), mses = jax.lax.scan(
            one, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(accumulate), micro))
        # Per level, the rows of every micro-batch back in the batch's order.
        return (loss, [join(m) for m in mses]), grads

    update = make_update(optimizer, ema_decay)

    def train_step(state, batch, rng, frozen=None):
        (loss, level_mses), grads = loss_and_grads(state.params, batch, rng, frozen)
        grad_norm = global_norm(grads)
        # A non-finite loss or gradient skips the whole update (params, moments, EMA).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = update(state, grads, grad_norm, finite).replace(
            step=state.step + 1,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "learning_rate": learning_rate_fn(state.step),
                   "nonfinite_steps": new_state.nonfinite_steps}
        rows = diffusion.level_batch_sizes(diffusion_config.mixed_ratio,
                                           batch["images"].shape[0], len(scales),
                                           batch_shards * accumulate)
        for i, (mse, r) in enumerate(zip(level_mses, rows)):
            # Mean over the rows this level ran on (mixed ratios skip the others).
            metrics[f"mse_level{i}"] = jnp.sum(mse) / r
        return new_state, metrics

    return train_step
