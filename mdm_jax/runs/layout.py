"""What a run directory holds, and where: the one owner of its layout.

    <workdir>/config.json               the training config, as run
    <workdir>/metrics.jsonl             one JSON record per logged step
    <workdir>/tensorboard/              event files (scalars and sample grids)
    <workdir>/samples/<stage>_stepNNNNNNN.png
    <workdir>/checkpoints/<stage>/<step>/{state,data,config}   Orbax checkpoints
    <workdir>/eval_reference/<size>px/  statistics of the data set (config.eval_every)
    <workdir>/lock                      held by the training run writing here

Paths are `etils.epath.Path`s, so a workdir may be a local folder or a URL
(gs://bucket/run); everything of a run goes to the same place.
"""
from etils import epath


class RunDir:
    def __init__(self, workdir):
        self.root = self.resolve(workdir)

    @staticmethod
    def resolve(path):
        """An epath.Path: URLs as given, local paths with ~ expanded and made absolute."""
        path = epath.Path(path)
        if path.is_absolute() or "://" in str(path):
            return path
        return path.expanduser().resolve()

    @property
    def config_json(self):
        return self.root / "config.json"

    @property
    def metrics(self):
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self):
        return self.root / "tensorboard"

    @property
    def lock(self):
        return self.root / "lock"

    @property
    def checkpoints(self):
        return self.root / "checkpoints"

    def stage_checkpoints(self, stage_name):
        return self.checkpoints / stage_name

    def sample_grid(self, stage_name, step):
        return self.root / "samples" / f"{stage_name}_step{step:07d}.png"

    def eval_reference(self, image_size):
        return self.root / "eval_reference" / f"{image_size}px"
