"""Noise schedules against the reference's tables (tests/data/parity/schedules.npz)."""
import numpy as np
import pytest

from mdm_jax.diffusion import schedules
from parity_utils import load, read_json

F = load("schedules")
N = 1000
TABLE_TOL = dict(rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", schedules.SCHEDULE_TYPES)
def test_base_gammas_and_vdm_weights(name):
    gammas = schedules.base_gammas(name, N)
    assert gammas.dtype == np.float32 and gammas.shape == (N + 1,) and gammas[0] == 1
    np.testing.assert_allclose(gammas, F[f"gammas/{name}"], **TABLE_TOL)
    np.testing.assert_allclose(
        schedules.vdm_loss_weights(gammas), F[f"vdm_loss_weights/{name}"], **TABLE_TOL)


def test_ddpm_uses_beta_range_from_reference_config():
    config = read_json(F, "meta_json")["schedules"]["ddpm"]["config"]
    gammas = schedules.base_gammas("ddpm", N, config["beta_start"], config["beta_end"])
    np.testing.assert_allclose(gammas, F["gammas/ddpm"], **TABLE_TOL)


@pytest.mark.parametrize("name", schedules.SCHEDULE_TYPES)
@pytest.mark.parametrize("scale", [4, 16])
@pytest.mark.parametrize("power", [1, 2])
def test_shifted(name, scale, power):
    shifted = schedules.shift(schedules.base_gammas(name, N), scale, power)
    np.testing.assert_allclose(shifted, F[f"shifted/{name}/scale{scale}_power{power}"], **TABLE_TOL)
    assert shifted[0] == 1  # the clean image stays clean


@pytest.mark.parametrize("name", schedules.SCHEDULE_TYPES)
@pytest.mark.parametrize("scales", [(4, 1), (16, 4, 1)])
@pytest.mark.parametrize("power", [1, 2])
def test_level_gammas(name, scales, power):
    tables = schedules.level_gammas(schedules.base_gammas(name, N), scales, power)
    key = f"nested_get_gammas/{name}/scales{'_'.join(map(str, scales))}_power{power}"
    assert tables.shape == (len(scales), N + 1)
    for i, table in enumerate(tables):
        np.testing.assert_allclose(table, F[f"{key}/{i}"], **TABLE_TOL)


def test_gamma_maps_are_per_example_table_reads():
    # The reference broadcasts gammas[times] to [B, C, h, h] maps at each level's size.
    meta = read_json(F, "meta_json")["maps"]
    times = F["maps/times"].astype(np.int64)
    tables = schedules.level_gammas(
        schedules.base_gammas(meta["schedule"], N), meta["scales"], meta["power"])
    for i, size in enumerate(meta["sizes"]):
        want = F[f"maps/get_gammas/{i}"]
        assert want.shape[-1] == size
        got = np.broadcast_to(tables[i][times][:, None, None, None], want.shape)
        np.testing.assert_allclose(got, want, **TABLE_TOL)


@pytest.mark.parametrize("n", [4, 10, 50, 250])
def test_respaced_timesteps(n):
    np.testing.assert_array_equal(schedules.respaced_timesteps(n, N), F[f"set_timesteps/{n}"])


def test_respaced_timesteps_known_values_and_full_range():
    np.testing.assert_array_equal(schedules.respaced_timesteps(4, 1000), [801, 601, 400, 200, 0])
    np.testing.assert_array_equal(schedules.respaced_timesteps(N, N), np.arange(N, -1, -1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        schedules.respaced_timesteps(0, N)


def test_shift_below_or_at_one_is_identity_and_shifting_lowers_gamma():
    gammas = schedules.base_gammas("cosine", N)
    np.testing.assert_array_equal(schedules.shift(gammas, 1, 2), gammas)
    np.testing.assert_array_equal(schedules.shift(gammas, 0.5, 1), gammas)
    assert np.all(schedules.shift(gammas, 4, 1)[1:] < gammas[1:])


@pytest.mark.parametrize("bad", ["sigmoid", "SIGMOID", "linear"])
def test_unknown_schedule_names_the_valid_ones(bad):
    with pytest.raises(ValueError, match="cosine, ddpm, deepfloyd"):
        schedules.base_gammas(bad, N)
