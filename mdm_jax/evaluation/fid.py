"""Feature statistics and the Fréchet distance between them (FID on Inception features).

FID = ||mu1 - mu2||² + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2)), with mu and
sigma the mean and covariance (N - 1 denominator, as np.cov) of each image set's features,
computed in float64 as pytorch-fid and torch-fidelity do.

Statistics files are .npz with arrays `mu` [D] and `sigma` [D, D] (the format of
pytorch-fid's `--save-stats`, so its files load too), plus optional metadata arrays.
"""
import os

import numpy as np
from absl import logging

_HOW_TO_MAKE = ("Make reference statistics with python -m mdm_jax.evaluate "
                "--write_reference=PATH.npz (or pytorch-fid's --save-stats).")


class FeatureStatistics:
    """Streaming mean and covariance of feature batches, without keeping the features.

    Accumulates count, sum and sum of outer products in float64. They are taken about a
    shift (the first batch's mean), so that the covariance doesn't come from subtracting
    two large nearly equal numbers when features have a large common mean.
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._outer = None

    def add(self, features):
        """Adds a [N, D] batch (numpy or jax array)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"Expected [N, D] features, got shape {f.shape}.")
        if self._shift is None:
            self._shift = f.mean(axis=0) if len(f) else np.zeros(f.shape[1])
            self._sum = np.zeros(f.shape[1])
            self._outer = np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self._shift.shape[0]:
            raise ValueError(f"Features of dimension {f.shape[1]} added to statistics of "
                             f"dimension {self._shift.shape[0]}.")
        d = f - self._shift
        self.count += len(f)
        self._sum += d.sum(axis=0)
        self._outer += d.T @ d

    def statistics(self):
        """(mu [D], sigma [D, D]), float64; sigma as np.cov(features, rowvar=False)."""
        if self.count < 2:
            raise ValueError(f"Statistics need at least 2 feature vectors, have {self.count}.")
        mean_shifted = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(mean_shifted, mean_shifted)) / (self.count - 1)
        return self._shift + mean_shifted, sigma


def _check_shapes(mu, sigma, what="statistics"):
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"Malformed {what}: mu has shape {mu.shape} and sigma {sigma.shape}; "
                         "expected [D] and [D, D].")


def save_statistics(path, mu, sigma, **metadata):
    """Writes mu, sigma and metadata (numbers, strings or arrays of them) to `path` (.npz)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_shapes(mu, sigma)
    arrays = {}
    for key, value in metadata.items():
        arrays[key] = np.asarray(value)
        if arrays[key].dtype == object:
            raise ValueError(f"Metadata {key!r} is not a number, string or array of them "
                             "(encode it, e.g. as a JSON string).")
    # Through a file object: np.savez would append .npz to a path without it.
    with open(path, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, **arrays)


def load_statistics(path, with_metadata=False):
    """(mu, sigma) float64 from a statistics .npz; with_metadata: (mu, sigma, {key: value})."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No FID statistics at {path!r}. {_HOW_TO_MAKE}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a statistics .npz ({e}). {_HOW_TO_MAKE}") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (it has "
                         f"{sorted(arrays)}): not FID statistics. {_HOW_TO_MAKE}")
    mu, sigma = arrays.pop("mu").astype(np.float64), arrays.pop("sigma").astype(np.float64)
    _check_shapes(mu, sigma, f"statistics in {path}")
    if not with_metadata:
        return mu, sigma
    return mu, sigma, {k: v.item() if v.ndim == 0 else v for k, v in arrays.items()}


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as a float.

    As pytorch-fid and the TensorFlow original: scipy's sqrtm of sigma1 @ sigma2; if that
    is not finite (a near-singular product), again with eps * I added to both covariances;
    an imaginary part from rounding is dropped, one that is not negligible (a diagonal
    entry above 1e-3) raises.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    _check_shapes(mu1, sigma1, "first statistics")
    _check_shapes(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"The statistics have different dimensions: {mu1.shape[0]} and "
                         f"{mu2.shape[0]}; were they computed with the same feature network?")

    # Here, not at the top: the trainer imports this module and scipy costs it 0.4 s at
    # every start, while a distance is only computed when an evaluation runs.
    import scipy.linalg  # noqa: PLC0415
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logging.warning("sqrtm(sigma1 @ sigma2) is not finite (a near-singular product: "
                        "fewer images than feature dimensions?); adding %g to the diagonals.",
                        eps)
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("The matrix square root of sigma1 @ sigma2 has an imaginary part "
                             f"of up to {np.max(np.abs(covmean.imag)):.3g}: the covariances "
                             "are not valid (too few samples, or non-finite features?).")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
