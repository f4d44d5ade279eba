"""FID: the Flax FID Inception against pytorch-fid's and torch-fidelity's networks on the
same random weights (whose names both load strictly), weights files and their errors,
feature statistics, and the Fréchet distance against both implementations.
"""
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdm_jax.evaluation import convert_inception, fid, inception

torch = pytest.importorskip("torch", reason="pip install -e '.[test]' brings torch")
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")
torch_fidelity_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
torch_fidelity_fid = pytest.importorskip("torch_fidelity.metric_fid")
torchvision = pytest.importorskip("torchvision")

# One input smaller than 299 and one larger (upsampling and downsampling), not square.
SIZES = [(2, 61, 80), (2, 331, 310)]


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.max(np.abs(ours - reference)) / np.max(np.abs(reference))


def random_state_dict(seed=0):
    """Random FID Inception tensors at the trained network's scales: He-initialised convs,
    BatchNorm near identity with positive variances, so activations neither vanish nor
    explode through the 94 layers."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in inception.expected_tensors().items():
        if name.endswith("conv.weight"):
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        elif name.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("bn.bias", "running_mean")):
            value = rng.normal(0, 0.1, shape)
        else:                                    # fc
            value = rng.normal(0, 0.01, shape)
        tensors[name] = torch.from_numpy(value.astype(np.float32))
    return tensors


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The random state dict, as .pth (torch.save) and as the converter's .npz/.safetensors."""
    directory = tmp_path_factory.mktemp("inception")
    state = random_state_dict()
    paths = {"pth": str(directory / "pt_inception.pth")}
    torch.save(state, paths["pth"])
    paths["npz"] = str(directory / "inception_fid.npz")
    convert_inception.convert(paths["pth"], paths["npz"])
    paths["safetensors"] = str(directory / "inception_fid.safetensors")
    subprocess.run([sys.executable, "-m", "mdm_jax.convert_inception",
                    f"--input={paths['pth']}", f"--output={paths['safetensors']}"], check=True)
    return state, paths


@pytest.fixture(scope="module")
def params(weights):
    return inception.load_params(weights[1]["pth"])


def test_weights_formats_load_the_same(weights, params):
    state, paths = weights
    for kind in ("npz", "safetensors"):
        other = inception.load_params(paths[kind])
        assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(params)):
            np.testing.assert_array_equal(a, b)
    # The layout: torch [out, in, kh, kw] -> Flax [kh, kw, in, out]; BN statistics.
    kernel = state["Mixed_6b.branch7x7_2.conv.weight"].numpy()
    np.testing.assert_array_equal(params["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  kernel.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  state["Mixed_7c.branch_pool.bn.running_var"].numpy())


def test_matches_pytorch_fid(weights, params, monkeypatch):
    state, _ = weights
    # fid_inception_v3 downloads the weights through this name; its strict load_state_dict
    # then proves that our tensor names and shapes are the real file's.
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                        lambda *args, **kwargs: dict(state))
    reference = pytorch_fid_inception.InceptionV3(
        [3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    rng = np.random.default_rng(1)
    for shape in SIZES:
        images01 = rng.uniform(0, 1, (*shape, 3)).astype(np.float32)
        with torch.no_grad():
            expected = reference(torch.from_numpy(images01).permute(0, 3, 1, 2))[0]
        expected = expected[:, :, 0, 0].numpy()
        ours = np.asarray(inception.features(params, 2 * images01 - 1))
        assert ours.shape == (shape[0], 2048) and ours.dtype == np.float32
        error = relative_error(ours, expected)
        print(f"pytorch_fid {shape}: max |ours - pytorch-fid| / max |pytorch-fid| = {error:.2e}"
              f" (max |feature| {np.max(np.abs(expected)):.3g})")
        assert 0.05 < np.max(np.abs(expected)) < 100     # activations neither vanished nor exploded
        assert error < 1e-4


def test_matches_torch_fidelity(weights, params):
    _, paths = weights
    reference = torch_fidelity_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=paths["pth"])
    rng = np.random.default_rng(2)
    for shape in SIZES:
        images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        with torch.no_grad():
            (expected,) = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
        ours = np.asarray(inception.features(params, images, mode="torch_fidelity"))
        error = relative_error(ours, expected.numpy())
        print(f"torch_fidelity {shape}: relative error {error:.2e}")
        assert error < 1e-4
        # Float input in [-1, 1] is the same image once quantised to uint8.
        as_float = images.astype(np.float32) / 127.5 - 1
        np.testing.assert_allclose(inception.preprocess(as_float, mode="torch_fidelity"),
                                   inception.preprocess(images, mode="torch_fidelity"), atol=1e-6)


@pytest.mark.parametrize("size", [(5, 7), (64, 64), (299, 299), (300, 517)])
def test_resizes_as_the_standards_do(size):
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (1, *size, 3), dtype=np.uint8)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.interpolate(nchw / 255, size=(299, 299), mode="bilinear",
                                               align_corners=False) * 2 - 1
    ours = inception.preprocess(images, mode="pytorch_fid")
    np.testing.assert_allclose(ours, expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    expected = (interpolate_bilinear_2d_like_tensorflow1x(nchw, size=(299, 299),
                                                          align_corners=False) - 128) / 128
    ours = inception.preprocess(images, mode="torch_fidelity")
    np.testing.assert_allclose(ours, expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------
# Weights files that are not the FID network

def _save_npz(path, state):
    np.savez(path, **{k: v.numpy() for k, v in state.items()})
    return str(path)


def test_refuses_missing_and_misshaped_tensors(tmp_path):
    state = random_state_dict()
    del state["Mixed_6c.branch7x7dbl_3.conv.weight"]
    state["Mixed_5b.branch_pool.bn.running_var"] = torch.ones(33)
    with pytest.raises(ValueError) as error:
        inception.load_params(_save_npz(tmp_path / "broken.npz", state))
    message = str(error.value)
    assert "is not the FID Inception weights file" in message
    assert "missing tensors: Mixed_6c.branch7x7dbl_3.conv.weight" in message
    assert "Mixed_5b.branch_pool.bn.running_var has shape (33,), expected (32,)" in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message


def test_refuses_torchvision_imagenet_inception(tmp_path):
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = str(tmp_path / "inception_v3_imagenet.pth")
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError) as error:
        inception.load_params(path)
    message = str(error.value)
    assert "is not the FID Inception weights file" in message
    assert "unexpected tensors: AuxLogits." in message
    assert "fc.weight has shape (1000, 2048), expected (1008, 2048)" in message
    assert "torchvision's ImageNet inception_v3" in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    with pytest.raises(ValueError, match="is not the FID Inception"):
        convert_inception.convert(path, str(tmp_path / "out.npz"))
    assert not (tmp_path / "out.npz").exists()


def test_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception.load_params(str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="unknown weights format '.ckpt'"):
        inception.load_params(str(tmp_path / "weights.ckpt"))


# ---------------------------------------------------------------------------------------
# Statistics and the Fréchet distance

def correlated_features(seed, n=200, dim=64):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + rng.uniform(0, 2, dim)


def test_accumulator_matches_numpy():
    features = (correlated_features(0, n=203) + 1e3).astype(np.float32)  # large common mean
    statistics = fid.FeatureStatistics()
    for start in range(0, len(features), 50):            # uneven batches: 50, 50, 50, 50, 3
        statistics.add(features[start:start + 50])
    features = features.astype(np.float64)
    mu, sigma = statistics.statistics()
    assert statistics.count == 203
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="dimension 3"):
        statistics.add(np.zeros((2, 3)))


def test_frechet_distance_matches_references(monkeypatch):
    a, b = correlated_features(1), correlated_features(2)
    mu1, sigma1 = a.mean(axis=0), np.cov(a, rowvar=False)
    mu2, sigma2 = b.mean(axis=0), np.cov(b, rowvar=False)
    ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)

    # pytorch-fid 0.3.0 calls sqrtm(..., disp=False), which scipy 1.18 no longer has: give
    # it the old signature around the same scipy function.
    import scipy.linalg

    class OldScipyLinalg:
        @staticmethod
        def sqrtm(matrix, disp=True):
            root = scipy.linalg.sqrtm(matrix)
            return (root, 0.0) if not disp else root

    monkeypatch.setattr(pytorch_fid_score, "linalg", OldScipyLinalg)
    expected = pytorch_fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    fidelity = torch_fidelity_fid.fid_statistics_to_metric(
        {"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    fidelity = fidelity[torch_fidelity_fid.KEY_METRIC_FID]
    print(f"FID {ours:.10g}; pytorch-fid {expected:.10g} (relative "
          f"{abs(ours - expected) / expected:.1e}); torch-fidelity {fidelity:.10g} (relative "
          f"{abs(ours - fidelity) / fidelity:.1e})")
    assert ours == pytest.approx(expected, rel=1e-6)
    assert ours == pytest.approx(fidelity, rel=1e-6)
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_diagonal_covariances():
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 2, 16), rng.uniform(0.1, 2, 16)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        closed_form, rel=1e-10)


def test_frechet_distance_shape_errors():
    with pytest.raises(ValueError, match="different dimensions: 3 and 4"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"mu has shape \(3,\) and sigma \(4, 4\)"):
        fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


def test_statistics_files(tmp_path):
    features = correlated_features(5)
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    path = str(tmp_path / "reference")                  # no .npz: written as named
    fid.save_statistics(path, mu, sigma, mode="pytorch_fid", num_images=200)
    loaded_mu, loaded_sigma, metadata = fid.load_statistics(path, with_metadata=True)
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    assert metadata == {"mode": "pytorch_fid", "num_images": 200}

    # pytorch-fid's --save-stats format.
    np.savez_compressed(tmp_path / "pytorch_fid.npz", mu=mu.astype(np.float32), sigma=sigma)
    np.testing.assert_array_equal(fid.load_statistics(str(tmp_path / "pytorch_fid.npz"))[0],
                                  mu.astype(np.float32))

    with pytest.raises(FileNotFoundError, match="--write_reference="):
        fid.load_statistics(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(ValueError, match=r"no 'mu' and 'sigma'.*--write_reference="):
        fid.load_statistics(str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="not a number, string or array"):
        fid.save_statistics(str(tmp_path / "bad.npz"), mu, sigma, config={"a": 1})
