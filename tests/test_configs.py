"""Every experiment config loads and plans its stages; presets match the released sizes;
validation names the fix."""
import glob
import importlib.util
import os

import jax
import pytest

from mdm_jax.models import config as model_config
from mdm_jax.models import init_params, presets
from mdm_jax.models.flops import parameter_count
from mdm_jax.runs.stages import plan_stages
from mdm_jax.training.validate import validate

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("preset, image_size, millions", [
    (presets.cc12m_64, 64, 461.4), (presets.cc12m_256, 256, 476.6),
    (presets.cc12m_1024, 1024, 481.0)])
def test_cc12m_presets_have_the_released_parameter_counts(preset, image_size, millions):
    cfg = preset()
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), image_size))
    assert parameter_count(params) / 1e6 == pytest.approx(millions, rel=0.005)


# from_checkpoint.py reads a run's saved config (tests/test_sample_cli.py runs it).
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                     if not p.endswith("from_checkpoint.py"))


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_config_loads_and_plans_its_stages(path):
    cfg = load(os.path.basename(path)[:-3])
    model_config.validate(cfg.model)
    stages = plan_stages(cfg)
    assert [s.config.num_levels for s in stages] == list(range(
        stages[0].config.num_levels, stages[0].config.num_levels + len(stages)))
    # The last stage trains the whole model at the data's resolution.
    assert stages[-1].image_size == cfg.data.image_size
    assert stages[-1].config.num_levels == len(model_config.levels(cfg.model))


def synthetic_demo():
    cfg = load("demo")
    cfg.data.dataset = "synthetic"   # nothing to build
    return cfg


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.stages.res64, "global_batch_size", 12),
     r"global_batch_size=12 must be divisible by the 8 batch shards"),
    (lambda c: setattr(c.mesh, "fsdp", 3), r"not a multiple of 3"),
    (lambda c: setattr(c.data, "image_size", 68), r"image_size 68 must be divisible by 8"),
    (lambda c: setattr(c.stages.res64, "num_levels", 1), r"it must be 2"),
    (lambda c: setattr(c.stages.res64, "multi_res_weights", (1.0,)),
     r"needs one entry per level"),
    (lambda c: setattr(c.data, "dataset", "laion"), r"data.dataset must be one of"),
    # The tests run on the CPU, where cuDNN attention can't.
    (lambda c: setattr(c.model, "attention_impl", "cudnn"),
     r"needs NVIDIA GPUs .* --config.model.attention_impl=xla"),
])
def test_validation_names_the_fix(change, message):
    cfg = synthetic_demo()
    change(cfg)
    with pytest.raises(ValueError, match=message):
        validate(cfg, num_devices=8, num_processes=1)


def test_a_valid_config_passes():
    assert validate(synthetic_demo(), num_devices=8, num_processes=1)


def test_from_checkpoint_config_names_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match="from_checkpoint.py:RUN_DIR"):
        load("from_checkpoint")
    with pytest.raises(FileNotFoundError, match="training run's workdir"):
        load("from_checkpoint", str(tmp_path))


def test_default_xla_flags_never_override_the_user_s():
    from mdm_jax.parallel.xla_flags import with_defaults
    defaults = ("--xla_gpu_enable_triton_gemm=false",)
    assert with_defaults("", defaults) == "--xla_gpu_enable_triton_gemm=false"
    assert with_defaults("--xla_gpu_enable_triton_gemm=true", defaults) == \
        "--xla_gpu_enable_triton_gemm=true"
    assert with_defaults(" --xla_dump_to=/tmp/d ", defaults) == \
        "--xla_dump_to=/tmp/d --xla_gpu_enable_triton_gemm=false"
