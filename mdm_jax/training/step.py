"""One pure training step: loss over all levels, gradients, a guarded update, EMA.

`make_train_step` closes over the static parts (model, diffusion settings, optimizer);
the returned `train_step(state, batch, rng, frozen)` is what the loop jits once, with
in/out shardings and the state donated. The loss's pyramid and noise are made on device.
"""
import jax
import jax.numpy as jnp
import optax

from mdm_jax import diffusion
from mdm_jax.conditioning.text import no_text
from mdm_jax.runs.state import ema_update


def make_train_step(model, diffusion_config, scales, optimizer, learning_rate_fn, ema_decay,
                    text_fn=no_text):
    """Builds train_step(state, batch, rng, frozen) -> (state, metrics).

    text_fn(trainable_params, frozen_params, batch) -> (lm_outputs, lm_mask) turns the
    batch's text into the denoiser's conditioning (a trainable encoder's params live in
    state.params beside 'unet'; a frozen encoder's come in `frozen`).
    """
    scales = tuple(scales)
    uses_labels = model.model.num_classes > 0

    def loss_fn(params, batch, rng, frozen):
        noise_rng, dropout_rng = jax.random.split(rng)
        images = batch["images"].astype(jnp.float32)
        times, noises = diffusion.sample_loss_noise(
            noise_rng, images, scales, diffusion_config.num_diffusion_steps)
        lm_outputs, lm_mask = text_fn(params, frozen, batch)
        extra = {"class_labels": batch["labels"]} if uses_labels else {}
        micros = {"scale": batch["scale"]} if "scale" in batch else {}

        def denoise(xs, t, lm, mask, micro, **kwargs):
            return model.apply({"params": params["unet"]}, xs, t, lm, mask, micro,
                               deterministic=False, rngs={"dropout": dropout_rng}, **kwargs)

        per_example, aux = diffusion.multires_loss(
            denoise, images, times, noises, config=diffusion_config, scales=scales,
            lm_outputs=lm_outputs, lm_mask=lm_mask, micros=micros, **extra)
        return diffusion.batch_loss(per_example, aux["example_weight"]), aux

    def train_step(state, batch, rng, frozen=None):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng, frozen)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay, state.step)
        # A non-finite loss or gradient skips the whole update (params, moments, EMA).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def guarded(new, old):
            return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=guarded(params, state.params),
            opt_state=guarded(opt_state, state.opt_state),
            ema_params=guarded(ema, state.ema_params),
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "learning_rate": learning_rate_fn(state.step),
                   "nonfinite_steps": new_state.nonfinite_steps}
        rows = diffusion.level_batch_sizes(diffusion_config.mixed_ratio,
                                           batch["images"].shape[0], len(scales))
        for i, (mse, r) in enumerate(zip(aux["mse"], rows)):
            # Mean over the rows this level ran on (mixed ratios skip the others).
            metrics[f"mse_level{i}"] = jnp.sum(mse) / r
        return new_state, metrics

    return train_step
