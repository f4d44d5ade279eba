"""The analytic-by-tracing FLOP count against XLA's cost analysis (CPU counts convs)."""
import jax
import pytest

from mdm_jax.models import build_model, example_inputs, init_params
from mdm_jax.models import config as config_lib
from mdm_jax.models.flops import (
    TRAINING_MULTIPLIER,
    forward_flops_per_example,
    training_flops_per_example,
)


def small_text_nested_model():
    inner = config_lib.level_config(
        resolution_channels=[64, 128], num_resnets_per_resolution=[1, 1], attention_levels=[1],
        num_attention_layers=[0, 1], temporal_dim=256, use_attention_ffn=True,
        micro_conditioning="scale:16")
    outer = config_lib.level_config(
        resolution_channels=[32, 64], num_resnets_per_resolution=[1, 1],
        num_attention_layers=[0, 0], temporal_dim=256, num_groups_norm=16,
        skip_mid_blocks=True, micro_conditioning="scale:32")
    outer.inner = inner
    return config_lib.model_config(outer, conditioning_feature_dim=64,
                                   conditioning_feature_proj_dim=128)


def xla_forward_flops(cfg, image_size, batch_size, text_length):
    params = init_params(cfg, jax.random.key(0), image_size)
    model = build_model(cfg)
    xs, kwargs = example_inputs(cfg, image_size, batch_size, text_length)
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x, **kwargs)).lower(
        params, xs).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"] / batch_size


@pytest.mark.slow
def test_flop_count_agrees_with_xla_cost_analysis_within_5_percent():
    cfg = small_text_nested_model()
    ours = forward_flops_per_example(cfg, 64, text_length=16)
    cfg.subpixel_upsample = False  # what the count counts (the architecture's up convs)
    xla = xla_forward_flops(cfg, 64, batch_size=2, text_length=16)
    assert abs(ours - xla) <= 0.05 * xla, (ours, xla)


def test_the_count_is_the_architecture_s_whichever_path_runs():
    cfg = small_text_nested_model()
    counts = []
    for subpixel in (True, False):
        cfg.subpixel_upsample = subpixel
        counts.append(forward_flops_per_example(cfg, 64, text_length=16))
    assert counts[0] == counts[1]


def test_flops_grow_with_resolution_and_training_is_three_forwards():
    cfg = small_text_nested_model()
    small = forward_flops_per_example(cfg, 64, text_length=16)
    large = forward_flops_per_example(cfg, 128, text_length=16)
    # Convolutions scale with pixels (x4); attention over pixels grows faster still.
    assert large > 4 * small * 0.99
    assert training_flops_per_example(cfg, 64, 16) == TRAINING_MULTIPLIER * small


def test_a_mixed_ratio_counts_each_level_on_its_rows_only():
    cfg = small_text_nested_model()
    def flops(rows):
        return forward_flops_per_example(cfg, 64, text_length=16, level_rows=rows)
    full = forward_flops_per_example(cfg, 64, text_length=16)
    assert flops((2, 2)) == full
    inner_only = flops((0, 2))  # the outer level on no rows
    assert 0 < inner_only < full
    # Half the rows at 64²: per example, halfway between the two.
    assert flops((1, 2)) == pytest.approx((full + inner_only) / 2, rel=1e-12)
