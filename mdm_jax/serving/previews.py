"""The preview program: the stage's sampler, traced so that every few steps it sends the
x̂0 estimate of every level to the host while it runs.

It is a second jitted program, made by the same generate.stage_sampler as the final one
(so it walks the same trajectory), traced while a Flax method interceptor watches the
model's top-level call: after each call whose time is a preview step, a host callback
gets the guided, thresholded x̂0 of every level. The final images never come from it:
they come from the plain program, the one `python -m mdm_jax.sample` runs.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mdm_jax.diffusion import respaced_timesteps, threshold_x0, x0_and_eps
from mdm_jax.models import UNet
from mdm_jax.sampling import generate


def diffusion_config(stage, options):
    """The stage's diffusion settings with the options' threshold, as stage_sampler
    samples with."""
    if options.threshold is None:
        return stage.diffusion
    return dataclasses.replace(stage.diffusion, threshold=options.threshold)


def preview_steps(num_steps, num_diffusion_steps, every):
    """{gamma index t of a step: steps done once it is taken} for every `every`-th step
    and the last (the network sees time t - 1 at the step from t)."""
    timesteps = respaced_timesteps(num_steps, num_diffusion_steps)
    return {int(timesteps[i]): i + 1 for i in range(num_steps)
            if (i + 1) % every == 0 or i == num_steps - 1}


def guided_x0(xs, outputs, t, *, guidance, gammas, config):
    """Every level's x̂0 from the network's outputs at gamma index t, as the samplers
    form it: guidance u + w (c - u) over the [uncond; cond] halves, then thresholding."""
    x0s = []
    for level, (x, out) in enumerate(zip(xs, outputs)):
        if guidance != 1:  # the batch was doubled: [uncond; cond]
            x = jnp.split(x, 2)[1]
            uncond, cond = jnp.split(out, 2)
            out = uncond + guidance * (cond - uncond)
        x0, _ = x0_and_eps(out.astype(jnp.float32), x, gammas[level, t],
                           config.prediction_type)
        x0s.append(threshold_x0(x0, config.threshold, config.dynamic_threshold_percentile))
    return x0s


class PreviewProgram:
    """Called as the sampler generate.sample_levels runs (its `run`); while it runs,
    sink(steps_done, [x̂0 per level, numpy]) is called at each preview step."""

    def __init__(self, stage, options, mesh, every):
        self._run = generate.stage_sampler(stage, options, options.guidance, mesh)
        self._config = diffusion_config(stage, options)
        self._guidance = options.guidance
        self._gammas = self._config.level_gammas(tuple(stage.scales))
        self._steps_done = preview_steps(options.num_steps,
                                         self._config.num_diffusion_steps, every)
        self._shown = np.zeros(self._gammas.shape[1], bool)
        self._shown[list(self._steps_done)] = True
        self.sink = None

    def __call__(self, *args):
        # The interceptor acts while tracing, which happens inside this call (the first,
        # or a retrace); it is thread-local, so it is entered in the thread that calls.
        with nn.intercept_methods(self._intercept):
            return self._run(*args)

    def _intercept(self, next_fun, args, kwargs, context):
        outputs = next_fun(*args, **kwargs)
        top_call = (isinstance(context.module, UNet) and context.method_name == "__call__"
                    and context.module.scope.path == ())  # not an inner level's own call
        if top_call:
            self._send_at_preview_steps(args[0], args[1], outputs)
        return outputs

    def _send_at_preview_steps(self, xs, times, outputs):
        t = times[0] + 1  # the model is called at time t - 1 on the step from t

        def send():
            x0s = guided_x0(xs, outputs, t, guidance=self._guidance,
                            gammas=jnp.asarray(self._gammas), config=self._config)
            jax.debug.callback(self._on_host, t, x0s)

        jax.lax.cond(jnp.asarray(self._shown)[t], send, lambda: None)

    def _on_host(self, t, x0s):
        # An exception here would surface as a runtime error of the whole program, far
        # from its cause: a failed preview is logged and the sampling goes on.
        try:
            if self.sink is not None:
                self.sink(self._steps_done[int(t)], [np.asarray(x) for x in x0s])
        except Exception:  # noqa: BLE001 (see above)
            logging.exception("A preview could not be shown")
