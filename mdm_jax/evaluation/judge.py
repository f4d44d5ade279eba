"""The shapes judge: a small CNN that reads back what a one-shape scene shows.

The standard Inception weights can't be downloaded everywhere, so the embedded default is
measured by a network of our own, trained on the shapes scenes (`train_judge`). It reads
the main shape's `shape`, `colour`, `size` and `position` and the scene's `background` and
`texture`, all from a 64² image (other sizes are resized), and gives 128-d features for a
Fréchet distance in its own feature space ("judge-FID").

It is trained on one-shape scenes (data.shapes.max_objects=1, the demo's variant): with
several shapes "the main one" is the largest, which near-ties make unreadable.

The checkpoint is an .npz of the params (flattened by '/' paths) with the attribute
vocabularies in a JSON `meta` entry, so a judge trained on other vocabularies is refused.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.data import shapes_render

IMAGE_SIZE = 64
FEATURES = 128
# Cells of the 3x3 grid in row-major order (the index a position is judged by).
CELLS = tuple((r, c) for r in range(3) for c in range(3))
ATTRIBUTES = {
    "shape": shapes_render.SHAPES,
    "colour": tuple(shapes_render.COLOURS),
    "size": tuple(shapes_render.SIZES),
    "position": tuple(shapes_render.POSITIONS[cell] for cell in CELLS),
    "background": tuple(shapes_render.BACKGROUNDS),
    "texture": tuple(shapes_render.TEXTURES),
}
# What a class label of the shapes data names (shapes_render.class_index).
LABEL_ATTRIBUTES = ("shape", "colour")
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(__file__), "shapes_judge.npz")


def scene_attributes(scene):
    """{attribute: index} of a shapes_render.Scene (its main, i.e. first, shape)."""
    main = scene.shapes[0]
    return {"shape": ATTRIBUTES["shape"].index(main.shape),
            "colour": ATTRIBUTES["colour"].index(main.colour),
            "size": ATTRIBUTES["size"].index(main.size),
            "position": CELLS.index(main.cell),
            "background": ATTRIBUTES["background"].index(scene.background),
            "texture": ATTRIBUTES["texture"].index(scene.texture)}


def label_attributes(label):
    """{shape, colour} named by a shapes class label (shape-major, as class_index)."""
    shape, colour = divmod(int(label), len(ATTRIBUTES["colour"]))
    if not 0 <= shape < len(ATTRIBUTES["shape"]):
        raise ValueError(f"Label {label} is not a shapes class (0 to "
                         f"{len(shapes_render.CLASS_NAMES) - 1}).")
    return {"shape": shape, "colour": colour}


def caption_attributes(caption):
    """The attributes a one-shape caption names, e.g. 'a small red circle in the top
    left on a striped beige background' -> {size, colour, shape, position, texture,
    background}. Words it doesn't name are left out, so they aren't judged."""
    text = f" {caption.lower().replace(',', ' ')} "
    # Counted, not just found: "a small pink circle ... and a small pink circle ..." names
    # one shape word twice.
    if sum(text.count(f" {word} ") for word in ATTRIBUTES["shape"]) > 1:
        raise ValueError(f"Caption {caption!r} names several shapes; the judge reads "
                         "one-shape scenes.")
    found = {}
    for name in ("shape", "colour", "size", "background"):
        hits = [i for i, word in enumerate(ATTRIBUTES[name]) if f" {word} " in text]
        if len(hits) > 1:
            raise ValueError(f"Caption {caption!r} names several {name}s; the judge reads "
                             "one-shape scenes.")
        if hits:
            found[name] = hits[0]
    # Longest phrase first: "in the top left" must not also count as "at the top".
    for phrase in sorted(ATTRIBUTES["position"], key=len, reverse=True):
        if f" {phrase} " in text:
            found["position"] = ATTRIBUTES["position"].index(phrase)
            break
    adjectives = list(shapes_render.TEXTURES.values())
    for i, adjective in enumerate(adjectives):
        if f" {adjective} " in text:
            found["texture"] = i
    return found


class JudgeNet(nn.Module):
    """Four stages, each a stride-1 then a stride-2 conv (64² -> 4²), global average pool,
    128-d features, one linear head per attribute. The first stage reads every pixel: a
    small hexagon and a circle differ by a pixel or two. GroupNorm rather than BatchNorm:
    no state to carry. About 0.3 GFLOP an image (train it on a GPU; it judges fine on a
    CPU)."""
    widths: tuple = (32, 64, 128, 128)

    @nn.compact
    def __call__(self, images):
        x = images
        for i, width in enumerate(self.widths):
            for j, stride in enumerate((1, 2)):
                x = nn.Conv(width, (3, 3), strides=stride, padding=1, name=f"conv{i}_{j}")(x)
                x = nn.GroupNorm(num_groups=8, name=f"norm{i}_{j}")(x)
                x = nn.silu(x)
        features = nn.Dense(FEATURES, name="features")(jnp.mean(x, axis=(1, 2)))
        hidden = nn.silu(features)
        logits = {name: nn.Dense(len(values), name=f"head_{name}")(hidden)
                  for name, values in ATTRIBUTES.items()}
        return logits, features


def to_judge_input(images):
    """Images NHWC, uint8 or float in [-1, 1], any square size -> float32 64² in [-1, 1].

    Larger images are shrunk with an antialiased linear filter (area-like), so a 128²
    sample is read as its 64² average, as the scenes were drawn."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 127.5 - 1
    images = images.astype(jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        images = jax.image.resize(images, images.shape[:1] + (IMAGE_SIZE, IMAGE_SIZE, 3),
                                  "linear", antialias=True)
    return images


def _flatten(params, prefix=""):
    out = {}
    for key, value in params.items():
        path = f"{prefix}/{key}" if prefix else key
        out.update(_flatten(value, path) if isinstance(value, dict) else
                   {path: np.asarray(value)})
    return out


def _unflatten(flat):
    params = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return params


def save(path, params, **meta):
    """Writes the judge's params and metadata (attributes and anything in meta)."""
    meta = {"attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "image_size": IMAGE_SIZE, **meta}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **{
        f"params/{k}": v for k, v in _flatten(jax.device_get(params)).items()})
    os.replace(tmp, path)  # never a half-written checkpoint under the final name


class Judge:
    """A loaded judge: `predict(images)` -> ({attribute: index [N]}, features [N, 128])."""

    def __init__(self, params, meta=None):
        self.params = params
        self.meta = meta or {}
        self.net = JudgeNet()
        self._apply = jax.jit(self.net.apply)

    @classmethod
    def load(cls, path=None):
        path = path or DEFAULT_CHECKPOINT
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No judge checkpoint at {path}: train one with `python -m "
                "mdm_jax.train_judge --output=PATH`.")
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                flat = {k[len("params/"):]: f[k] for k in f.files if k.startswith("params/")}
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{path} is not a shapes judge checkpoint ({e}): train one with "
                             "`python -m mdm_jax.train_judge --output=PATH`.") from e
        want = {k: list(v) for k, v in ATTRIBUTES.items()}
        if meta.get("attributes") != want:
            raise ValueError(f"{path} judges other attributes than this version's shapes "
                             "data: retrain it with `python -m mdm_jax.train_judge`.")
        params = _unflatten(flat)
        expected = jax.eval_shape(JudgeNet().init, jax.random.key(0),
                                  jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]
        got = jax.tree_util.tree_map(np.shape, params)
        if jax.tree_util.tree_map(lambda s: tuple(s.shape), expected) != got:
            raise ValueError(f"{path} holds another network's params than JudgeNet: retrain "
                             "it with `python -m mdm_jax.train_judge`.")
        return cls(jax.tree_util.tree_map(jnp.asarray, params), meta)

    def predict(self, images, batch_size=256):
        """Judged attribute indices and features of images (see to_judge_input)."""
        predictions, features = {k: [] for k in ATTRIBUTES}, []
        for start in range(0, len(images), batch_size):
            x = to_judge_input(images[start:start + batch_size])
            logits, feats = self._apply({"params": self.params}, x)
            for name, value in logits.items():
                predictions[name].append(np.asarray(jnp.argmax(value, axis=-1)))
            features.append(np.asarray(feats, np.float64))
        return ({k: np.concatenate(v) for k, v in predictions.items()},
                np.concatenate(features))


def agreement(predictions, wanted):
    """How often the judged attributes agree with what each sample asked for.

    wanted: one {attribute: index} per sample (label_attributes or caption_attributes).
    Returns {"all": share of samples with every named attribute right, "<attribute>":
    share right among samples that name it}.
    """
    if len(wanted) != len(next(iter(predictions.values()))):
        raise ValueError("One wanted-attributes dict is needed per judged image.")
    all_right = []
    per_attribute = {}
    for i, want in enumerate(wanted):
        right = [int(predictions[k][i]) == v for k, v in want.items()]
        all_right.append(all(right))
        for (k, _), ok in zip(want.items(), right):
            per_attribute.setdefault(k, []).append(ok)
    out = {"all": float(np.mean(all_right))}
    out.update({k: float(np.mean(v)) for k, v in per_attribute.items()})
    return out
