"""A run loaded once for serving: a stage's EMA params, its text encoder and mesh, and the
compiled programs of the settings asked for so far.

Requests take turns on the device (a lock), and each runs in a worker thread that holds
the lock until its programs finish, so a person who leaves mid-request cannot leave the
device busy or the lock held. Loading and sampling are the sampling library's, as
`python -m mdm_jax.sample` does them.
"""
import dataclasses
import queue
import threading
import time
from typing import List

from mdm_jax.conditioning.text import TextConditioning
from mdm_jax.parallel import sharding
from mdm_jax.runs.stages import top_level_shape
from mdm_jax.sampling import generate
from mdm_jax.serving.previews import PreviewProgram
from mdm_jax.serving.programs import ProgramCache, program_key
from mdm_jax.serving.requests import Limits


@dataclasses.dataclass
class Preview:
    """The x̂0 estimate of every level after steps_done of num_steps (numpy, [-1, 1])."""
    steps_done: int
    num_steps: int
    levels: List


@dataclasses.dataclass
class Finished:
    """The final samples of every level, as the sample command draws them."""
    levels: List
    seconds: float          # the final program's run, compiling included
    compiled: bool          # whether this request compiled the program first


def conditioning_kind(stage, text):
    if text.config.kind != "none":
        return "text"
    return "class" if stage.model_config.num_classes > 0 else "none"


class SamplerSession:
    """A stage of a run (or converted model) with its params on the mesh, sampled on
    request with the sampling library's program."""

    def __init__(self, config, run_dir, stage=None, *, max_batch=8, max_steps=None,
                 cache_size=8):
        self.stage, directory, step = generate.choose_stage(config, run_dir, stage)
        generate.check_saved_config(config, directory, step)
        if len(top_level_shape(self.stage, 1)) == 5:
            raise ValueError(f"Stage {self.stage.name} is a video model: the page shows "
                             "images only for now; sample it with python -m mdm_jax.sample.")
        self.run_dir, self.checkpoint = run_dir, f"{directory}/{step}"
        self.mesh, rules = sharding.mesh_and_rules(config)
        self.text = TextConditioning.create(config, self.mesh, rules)
        self.params = generate.load_ema_params(config, self.stage, directory, step, self.text,
                                               self.mesh, rules)
        self.defaults = generate.with_config_defaults(generate.Options(), config)
        self.limits = self._limits(max_batch, max_steps)
        self._programs = ProgramCache(cache_size)
        self._device = threading.Lock()

    def _limits(self, max_batch, max_steps):
        devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if max_batch < devices:
            raise ValueError(f"--max_batch_size={max_batch} is below the {devices} devices "
                             f"a batch is split over: pass at least {devices}.")
        diffusion_steps = self.stage.diffusion.num_diffusion_steps
        if max_steps is not None and not 1 <= max_steps <= diffusion_steps:
            raise ValueError(f"--max_steps={max_steps} must be from 1 to the model's "
                             f"{diffusion_steps} diffusion steps.")
        return Limits(conditioning=conditioning_kind(self.stage, self.text),
                      num_classes=self.stage.model_config.num_classes,
                      max_steps=max_steps or diffusion_steps, devices=devices,
                      max_batch=max_batch)

    def run(self, options, preview_every=0):
        """Yields a Preview every `preview_every` steps (0: none) from the preview program,
        then one Finished from the final program; a failure is raised here."""
        events = queue.Queue()
        threading.Thread(target=self._work, args=(options, preview_every, events.put),
                         daemon=True, name="sampling").start()
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return

    def _work(self, options, preview_every, put):
        try:
            with self._device:
                if preview_every:
                    self._preview(options, preview_every, put)
                start = time.perf_counter()
                program, compiled = self._programs.get(
                    program_key(options),
                    lambda: generate.stage_sampler(self.stage, options, options.guidance,
                                                   self.mesh))
                levels = self._sample(options, program)
                put(Finished(levels, time.perf_counter() - start, compiled))
        except Exception as error:  # noqa: BLE001 (handed to the request that caused it)
            put(error)

    def _preview(self, options, every, put):
        program, _ = self._programs.get(
            program_key(options, "preview", every),
            lambda: PreviewProgram(self.stage, options, self.mesh, every))
        program.sink = lambda done, levels: put(Preview(done, options.num_steps, levels))
        try:
            self._sample(options, program)  # its images are the final run's; dropped
        finally:
            program.sink = None

    def _sample(self, options, program):
        """Every level of options.num_samples samples, from generate.sample_levels with
        the conditioning the sample command would give it."""
        o = options
        conditions = generate.conditioning_list(self.stage.model_config, self.text.config.kind,
                                                o.prompts, o.labels)
        conditions = [conditions[i % len(conditions)] for i in range(o.num_samples)
                      ] if conditions else []
        return generate.sample_levels(self.stage, self.params, self.text, self.mesh,
                                      conditions, o.num_samples, o, o.guidance, run=program)
