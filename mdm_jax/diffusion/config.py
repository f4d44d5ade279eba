"""What the diffusion math needs to know: schedule, prediction and loss settings.

`DiffusionConfig` is a frozen (hashable) dataclass so it can be a static argument of jitted
functions. Build it from an ml_collections config with `DiffusionConfig.from_dict`, or from
a reference (ml-mdm) `NestedDiffusionConfig` JSON with
mdm_jax.reference.diffusion.from_reference_diffusion.
"""
import dataclasses
from typing import Optional, Tuple

import numpy as np

from mdm_jax.diffusion import schedules

PREDICTION_TYPES = ("v", "eps", "x0")
THRESHOLDS = ("clip", "dynamic", "none")


def _check_choice(field, value, valid):
    if value not in valid:
        raise ValueError(f"{field} must be one of {', '.join(valid)}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    schedule_type: str = "deepfloyd"
    num_diffusion_steps: int = 1000
    beta_start: float = 1e-4  # 'ddpm' schedule only
    beta_end: float = 0.02  # 'ddpm' schedule only
    # Level i's SNR is divided by scales[i] ** power (scales = nest_ratio + [1]).
    schedule_shifted_power: float = 1.0
    prediction_type: str = "v"  # what the network outputs
    loss_target_type: str = "eps"  # what the MSE compares; the reference's DDPM is 'eps'
    use_vdm_loss_weights: bool = False
    use_double_loss: bool = True  # whether levels below the highest add to the loss
    multi_res_weights: Optional[Tuple[float, ...]] = None  # per level, highest first
    # Batch ratios per level, highest first: (2, 1) runs the highest level on the first 2/3
    # of the batch and the lowest on all of it.
    mixed_ratio: Optional[Tuple[float, ...]] = None
    # What the sampler does to its x0 estimate: clip to [-1, 1], Imagen's dynamic
    # thresholding at this percentile of |x0|, or nothing.
    threshold: str = "clip"
    dynamic_threshold_percentile: float = 0.995

    def __post_init__(self):
        _check_choice("schedule_type", self.schedule_type, schedules.SCHEDULE_TYPES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("loss_target_type", self.loss_target_type, PREDICTION_TYPES)
        _check_choice("threshold", self.threshold, THRESHOLDS)
        # Lists from configs become tuples so that the config stays hashable.
        for name in ("multi_res_weights", "mixed_ratio"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.mixed_ratio is not None and min(self.mixed_ratio) <= 0:
            raise ValueError(f"mixed_ratio entries must be positive; got {self.mixed_ratio}.")

    @classmethod
    def from_dict(cls, values):
        """From a mapping such as an ml_collections ConfigDict; unknown keys are errors."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown diffusion config keys {unknown}; valid keys: {', '.join(sorted(known))}.")
        return cls(**values)

    def base_gammas(self):
        return schedules.base_gammas(
            self.schedule_type, self.num_diffusion_steps, self.beta_start, self.beta_end)

    def level_gammas(self, scales):
        """Float32 numpy tables [len(scales), N + 1], highest resolution first."""
        return schedules.level_gammas(self.base_gammas(), scales, self.schedule_shifted_power)

    def check_levels(self, num_levels):
        for name in ("multi_res_weights", "mixed_ratio"):
            value = getattr(self, name)
            if value is not None and len(value) != num_levels:
                raise ValueError(
                    f"{name} has {len(value)} entries but the model has {num_levels} levels; "
                    "give one per level, highest resolution first.")


def level_fractions(mixed_ratio, num_levels):
    """Fraction of the batch each level trains on: cumsum(ratio) / sum(ratio), or all 1."""
    if mixed_ratio is None:
        return (1.0,) * num_levels
    ratio = np.asarray(mixed_ratio, np.float64)
    return tuple(float(m) for m in np.cumsum(ratio) / ratio.sum())


def level_batch_sizes(mixed_ratio, batch_size, num_levels, groups=1):
    """Rows each level trains on: int(m_i * B) for the fractions m above; with `groups`
    (the batch's blocks, one per device and micro-batch: models/rows.py), int(m_i * B /
    groups) in every block.

    Python ints, so that slicing is static under jit. float64 as in the reference, so that
    int() truncates the same way.
    """
    if batch_size % groups:
        raise ValueError(f"A batch of {batch_size} can't be split into {groups} equal "
                         "groups (devices x micro-batches); make it a multiple.")
    per_group = batch_size // groups
    return tuple(groups * int(m * per_group)
                 for m in level_fractions(mixed_ratio, num_levels))
