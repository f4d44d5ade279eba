"""The FID Inception network: InceptionV3 as TensorFlow's FID graph computes it, in Flax.

This is the network every published FID is measured with ("pool_3" of the 2015-12-05
TensorFlow Inception graph), as pytorch-fid ports it (`fid_inception_v3`) and
torch-fidelity re-implements it. It differs from torchvision's ImageNet inception_v3: its
own weights (1008 classes), average-pool branches that don't count the padding, and a
max-pool branch in the last block. NHWC throughout; BatchNorm in inference mode
(eps 1e-3); the output is the 2048-d global average of the last block.

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (FID_WEIGHTS_URL; a torch
state dict, so reading it needs PyTorch), or the same tensors under the same names as
`.npz` or `.safetensors`, which `python -m mdm_jax.convert_inception` writes.
torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` has the same tensor names.
Loading is strict (see `read_weights`). The 1008-class `fc` layer must be in the file
with its shape, which is part of telling this network from torchvision's, but is not
loaded: FID only uses the pool features.

`features(params, images, mode)` takes [N, H, W, 3] images of any size, float in [-1, 1]
(our samples' range) or uint8, and resizes and scales them as the chosen standard does:

- `"pytorch_fid"` (default; pytorch-fid's `InceptionV3`): images in [0, 1]
  resized to 299x299 with PyTorch's bilinear `F.interpolate(align_corners=False)` (no
  antialiasing when shrinking), then scaled to [-1, 1].
- `"torch_fidelity"` (torch-fidelity, and torchmetrics' FrechetInceptionDistance built on
  it, which the reference MDM evaluation uses): uint8 images resized to 299x299 with
  TensorFlow 1.x's bilinear resize (no half-pixel centres, no antialiasing), then
  (x - 128) / 128.

The two give slightly different features, so FIDs of the two modes are not comparable
with each other: compare a sample set only with reference statistics of the same mode.
"""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".npz", ".safetensors")
MODES = ("pytorch_fid", "torch_fidelity")
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
_FC_SHAPES = {"fc.weight": (NUM_CLASSES, FEATURE_DIM), "fc.bias": (NUM_CLASSES,)}


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU."""
    features: int
    kernel: tuple
    strides: int = 1
    padding: str = "VALID"
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding,
                    use_bias=False, precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


class _Block(nn.Module):
    """Base of the Inception blocks: `conv` makes a named BasicConv."""
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    def conv(self, name, features, kernel, strides=1, same=False):
        # Every padded conv of the network has stride 1 and odd kernels, where SAME is
        # torch's symmetric (k - 1) / 2 padding.
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        return BasicConv(features, kernel, strides, "SAME" if same else "VALID",
                         self.precision, name=name)

    def chain(self, x, *layers):
        """x through convs given as (name, features, kernel[, strides[, same]]) tuples."""
        for layer in layers:
            x = self.conv(*layer)(x)
        return x


def _avg_pool_3x3(x):
    # TensorFlow's average pool divides by the number of real inputs, not counting padding.
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, strides=1):
    padding = ((1, 1), (1, 1)) if strides == 1 else "VALID"
    return nn.max_pool(x, (3, 3), (strides, strides), padding=padding)


class InceptionA(_Block):     # Mixed_5b..5d, 35x35
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            self.chain(x, ("branch1x1", 64, 1)),
            self.chain(x, ("branch5x5_1", 48, 1), ("branch5x5_2", 64, 5, 1, True)),
            self.chain(x, ("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3, 1, True),
                       ("branch3x3dbl_3", 96, 3, 1, True)),
            self.chain(_avg_pool_3x3(x), ("branch_pool", self.pool_features, 1)),
        ], axis=-1)


class InceptionB(_Block):     # Mixed_6a: 35x35 -> 17x17
    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            self.chain(x, ("branch3x3", 384, 3, 2)),
            self.chain(x, ("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3, 1, True),
                       ("branch3x3dbl_3", 96, 3, 2)),
            _max_pool_3x3(x, strides=2),
        ], axis=-1)


class InceptionC(_Block):     # Mixed_6b..6e, 17x17, factorised 7x7 convs
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        return jnp.concatenate([
            self.chain(x, ("branch1x1", 192, 1)),
            self.chain(x, ("branch7x7_1", c7, 1), ("branch7x7_2", c7, (1, 7), 1, True),
                       ("branch7x7_3", 192, (7, 1), 1, True)),
            self.chain(x, ("branch7x7dbl_1", c7, 1), ("branch7x7dbl_2", c7, (7, 1), 1, True),
                       ("branch7x7dbl_3", c7, (1, 7), 1, True),
                       ("branch7x7dbl_4", c7, (7, 1), 1, True),
                       ("branch7x7dbl_5", 192, (1, 7), 1, True)),
            self.chain(_avg_pool_3x3(x), ("branch_pool", 192, 1)),
        ], axis=-1)


class InceptionD(_Block):     # Mixed_7a: 17x17 -> 8x8
    @nn.compact
    def __call__(self, x):
        return jnp.concatenate([
            self.chain(x, ("branch3x3_1", 192, 1), ("branch3x3_2", 320, 3, 2)),
            self.chain(x, ("branch7x7x3_1", 192, 1), ("branch7x7x3_2", 192, (1, 7), 1, True),
                       ("branch7x7x3_3", 192, (7, 1), 1, True), ("branch7x7x3_4", 192, 3, 2)),
            _max_pool_3x3(x, strides=2),
        ], axis=-1)


class InceptionE(_Block):     # Mixed_7b, 7c, 8x8
    # The FID graph's Mixed_7c max-pools where the paper (and Mixed_7b) average-pool.
    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        branch3x3 = self.chain(x, ("branch3x3_1", 384, 1))
        branch3x3dbl = self.chain(x, ("branch3x3dbl_1", 448, 1),
                                  ("branch3x3dbl_2", 384, 3, 1, True))
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
        return jnp.concatenate([
            self.chain(x, ("branch1x1", 320, 1)),
            self.chain(branch3x3, ("branch3x3_2a", 384, (1, 3), 1, True)),
            self.chain(branch3x3, ("branch3x3_2b", 384, (3, 1), 1, True)),
            self.chain(branch3x3dbl, ("branch3x3dbl_3a", 384, (1, 3), 1, True)),
            self.chain(branch3x3dbl, ("branch3x3dbl_3b", 384, (3, 1), 1, True)),
            self.chain(pooled, ("branch_pool", 192, 1)),
        ], axis=-1)


class InceptionV3(_Block):
    """[N, H, W, 3] images, already resized and scaled to [-1, 1] -> [N, 2048] float32.

    Module names are those of the PyTorch state dict (Mixed_5b.branch5x5_1.conv, ...), so
    tensor names map one to one (`torch_name`). `features` does the resizing and scaling.
    `precision` defaults to full float32, as the standard computes: without it, GPUs may
    run float32 convolutions in TF32.
    """

    @nn.compact
    def __call__(self, x):
        p = self.precision
        x = self.chain(x.astype(jnp.float32), ("Conv2d_1a_3x3", 32, 3, 2), ("Conv2d_2a_3x3", 32, 3),
                       ("Conv2d_2b_3x3", 64, 3, 1, True))
        x = _max_pool_3x3(x, strides=2)
        x = self.chain(x, ("Conv2d_3b_1x1", 80, 1), ("Conv2d_4a_3x3", 192, 3))
        x = _max_pool_3x3(x, strides=2)
        x = InceptionA(p, 32, name="Mixed_5b")(x)
        x = InceptionA(p, 64, name="Mixed_5c")(x)
        x = InceptionA(p, 64, name="Mixed_5d")(x)
        x = InceptionB(p, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(p, c7, name=name)(x)
        x = InceptionD(p, name="Mixed_7a")(x)
        x = InceptionE(p, "avg", name="Mixed_7b")(x)
        x = InceptionE(p, "max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))     # adaptive average pool to 1x1: pool3


# ---------------------------------------------------------------------------------------
# Weights

# Flax leaf -> torch suffix; kernels are [kh, kw, in, out] here, [out, in, kh, kw] in torch.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_name(path):
    """A variable's path, e.g. ('Mixed_5b', 'branch1x1', 'bn', 'var') -> its tensor name."""
    *modules, leaf = path
    return ".".join(modules) + "." + _TORCH_LEAF[leaf]


@functools.cache
def _abstract_variables():
    return jax.eval_shape(InceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))


def _variable_names():
    """[(collection, path, tensor name, shape of the tensor in torch layout)]."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(_abstract_variables())[0]:
        collection, *path = tuple(k.key for k in path)
        shape = leaf.shape if len(leaf.shape) != 4 else tuple(leaf.shape[i] for i in (3, 2, 0, 1))
        out.append((collection, tuple(path), torch_name(path), tuple(shape)))
    return out


def expected_tensors():
    """Tensor name -> shape (torch layout) of the FID Inception weights file."""
    shapes = {name: shape for _, _, name, shape in _variable_names()}
    shapes.update(_FC_SHAPES)
    return shapes


def _read_tensors(path):
    """name -> numpy array, from a .pth/.pt (PyTorch), .npz or .safetensors file."""
    suffix = os.path.splitext(path)[1]
    if suffix not in WEIGHTS_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format {suffix!r}; use one of "
                         f"{', '.join(WEIGHTS_SUFFIXES)}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No Inception weights at {path!r}. Download {FID_WEIGHTS_URL} and pass it "
            "(or its .npz from python -m mdm_jax.convert_inception).")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path} needs PyTorch: pip install 'mdm-jax[torch]', or convert it once "
            "where PyTorch is installed: python -m mdm_jax.convert_inception "
            f"--input={path} --output=inception_fid.npz") from None
    # A plain state dict of tensors: the safe unpickler (weights_only) reads it.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {name: t.detach().cpu().numpy() for name, t in state.items()
            if isinstance(t, torch.Tensor)}


def _describe(names, limit=8):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_weights(path):
    """The FID Inception tensors of `path` (name -> float32 array, torch layout), checked.

    Strict: every tensor of `expected_tensors()` must be there with its shape, and no other
    tensor may be, except BatchNorm's `num_batches_tracked` counters, which are dropped.
    Otherwise one ValueError names the missing, mis-shaped and unexpected tensors.
    """
    tensors = _read_tensors(path)
    expected = expected_tensors()
    counters = {n.rsplit(".", 1)[0] + ".num_batches_tracked" for n in expected
                if n.endswith(".running_mean")}
    missing = [n for n in expected if n not in tensors]
    misshaped = [f"{n} has shape {tuple(tensors[n].shape)}, expected {shape}"
                 for n, shape in expected.items()
                 if n in tensors and tuple(tensors[n].shape) != shape]
    unexpected = set(tensors) - set(expected) - counters
    if missing or misshaped or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors: {_describe(missing)}")
        if misshaped:
            problems.append("mis-shaped tensors: " + "; ".join(misshaped[:8]))
        if unexpected:
            problems.append(f"unexpected tensors: {_describe(unexpected)}")
        hint = ""
        if any(n.startswith("AuxLogits.") for n in unexpected):
            hint = (" Its AuxLogits tensors say it is torchvision's ImageNet inception_v3, "
                    "whose weights (and three blocks) differ from the FID network's.")
        raise ValueError(
            f"{path} is not the FID Inception weights file: " + "; ".join(problems) + "."
            + hint + f" Use pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
            f"({FID_WEIGHTS_URL}) or its conversion by python -m "
            "mdm_jax.convert_inception.")
    return {n: np.asarray(tensors[n], np.float32) for n in expected}


def load_params(path):
    """The network's variables ({'params', 'batch_stats'}, numpy float32) from a weights file.

    `path`: pt_inception-2015-12-05-6726825d.pth (needs PyTorch) or the same tensors as
    .npz / .safetensors. Checked strictly by `read_weights`; `fc` is checked, not loaded.
    Put them on the device once (jax.device_put): numpy arguments are copied at every call.
    """
    tensors = read_weights(path)
    variables = {}
    for collection, path_, name, _ in _variable_names():
        value = tensors[name]
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        node = variables.setdefault(collection, {})
        for key in path_[:-1]:
            node = node.setdefault(key, {})
        node[path_[-1]] = np.ascontiguousarray(value)
    return variables


# ---------------------------------------------------------------------------------------
# Preprocessing and features

def _torch_bilinear_taps(size_in, size_out):
    """(lo, hi, frac) of F.interpolate(mode='bilinear', align_corners=False, no antialias).

    As PyTorch's CPU kernel computes them: the scale in float32, the source position
    scale * (i + 0.5) - 0.5 rounded once to float32 (it compiles to a fused multiply-add).
    Positions in float64 would move inputs by up to ~1e-4, unfused float32 by ~1e-5.
    """
    f32 = np.float32
    scale = np.float64(f32(size_in) / f32(size_out))
    centres = np.arange(size_out, dtype=np.float64) + 0.5                  # half-pixel centres
    src = np.maximum((centres * scale - 0.5).astype(f32), f32(0))  # float64 product is exact
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, np.clip(src - lo.astype(f32), 0, 1).astype(f32)


def _tf1_bilinear_taps(size_in, size_out):
    """The same for TF 1.x resize_bilinear(align_corners=False) as torch-fidelity computes
    it: output pixel i samples input position i * in / out, in float32."""
    src = np.arange(size_out, dtype=np.float32) * np.float32(size_in / size_out)
    lo = src.astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, src - lo.astype(np.float32)


def _resize_axis(x, axis, taps):
    lo, hi, frac = taps
    frac = frac.reshape((-1,) + (1,) * (x.ndim - axis - 1))
    a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
    return a + (b - a) * frac


@functools.partial(jax.jit, static_argnames="mode")
def preprocess(images, mode="pytorch_fid"):
    """Images -> the network's [N, 299, 299, 3] float32 input, as `mode` prepares it.

    images: [N, H, W, 3], float in [-1, 1] (our samples' range) or uint8 in [0, 255].
    "pytorch_fid": to [0, 1] (uint8 / 255), PyTorch bilinear resize, then 2x - 1.
    "torch_fidelity": to uint8 values (float input rounded as saving a PNG would:
    round((x + 1) * 127.5)), TF1 bilinear resize, then (x - 128) / 128.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}.")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected [N, H, W, 3] RGB images, got shape {images.shape}.")
    is_uint8 = images.dtype == jnp.uint8
    x = images.astype(jnp.float32)
    if mode == "pytorch_fid":
        x = x / 255.0 if is_uint8 else (x + 1.0) / 2.0
        taps = _torch_bilinear_taps
    else:
        x = x if is_uint8 else jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0))
        taps = _tf1_bilinear_taps
    _, h, w, _ = images.shape
    x = _resize_axis(x, 1, taps(h, INPUT_SIZE))
    x = _resize_axis(x, 2, taps(w, INPUT_SIZE))
    return 2.0 * x - 1.0 if mode == "pytorch_fid" else (x - 128.0) / 128.0


@jax.jit
def _pool_features(params, x):
    return InceptionV3().apply(params, x)


def features(params, images, mode="pytorch_fid"):
    """[N, H, W, 3] images (float in [-1, 1], or uint8) -> [N, 2048] float32 pool3 features.

    params: `load_params`' variables. Resizing and scaling follow `mode` (see `preprocess`).
    Jittable; on its own it jits the preprocessing (per image shape) and the network
    (per batch size) separately, so other image sizes reuse the compiled network.
    """
    return _pool_features(params, preprocess(images, mode=mode))
