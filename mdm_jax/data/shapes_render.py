"""The shapes scenes: one to three anti-aliased shapes on a textured background, a caption
that names them, and a class label. Pure numpy and Pillow, so that builder worker
processes start fast; `shapes.py` turns these into a tfds data set.

Every scene is a function of (seed, index) alone, so a data set is reproducible byte for
byte and can be generated in any order, by any number of processes.

Geometry is drawn from signed distance fields evaluated at pixel centres: coverage is
clip(0.5 - distance, 0, 1), which anti-aliases edges at any resolution without
supersampling. Detail that only the higher levels of a nested model can see comes from
outlines about size/512 pixels wide and background textures whose period is a few
pixels whatever the image size.
"""
import dataclasses
import io

import numpy as np
from PIL import Image

# Named colours of the shapes (RGB). Background tones below stay at least ~30 levels
# (per channel, texture included) away from each of them, so a colour can be checked
# by looking at pixels.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 215, 35),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "purple": (135, 65, 190),
    "pink": (235, 110, 180),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
BACKGROUNDS = {
    "beige": (228, 218, 196),
    "sand": (212, 196, 160),
    "sage": (176, 194, 164),
    "slate": (112, 128, 144),
    "lavender": (206, 200, 228),
    "mint": (196, 228, 212),
    "peach": (240, 210, 186),
    "stone": (168, 162, 156),
}
TEXTURES = {"plain": "plain", "stripes": "striped", "checks": "checked", "dots": "dotted",
            "gradient": "shaded"}
TEXTURE_AMPLITUDE = 14  # levels either side of the background tone
# Radius (half the extent) of a shape, as a fraction of the image side.
SIZES = {"small": (0.07, 0.10), "medium": (0.11, 0.14), "large": (0.15, 0.19)}
# 3x3 grid of positions: (row, column) -> phrase.
POSITIONS = {
    (0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right",
    (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
    (2, 0): "in the bottom left", (2, 1): "at the bottom", (2, 2): "in the bottom right",
}
CELL_JITTER = 0.05  # how far (image fraction) a centre may stray from its cell's centre
CAPTION_TEMPLATES = (
    "{objects}",
    "a picture of {objects}",
    "{objects} on a {texture} {background} background",
    "{objects}, {background} background",
)
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


def class_index(shape, colour):
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


@dataclasses.dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    radius: float  # fraction of the image side
    centre: tuple  # (x, y), fractions of the image side
    cell: tuple  # (row, column) of the 3x3 grid
    angle: float  # rotation in radians

    @property
    def phrase(self):
        return f"a {self.size} {self.colour} {self.shape} {POSITIONS[self.cell]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: tuple  # largest first: shapes[0] is the main object (the class label)
    background: str
    texture: str
    texture_period: float  # pixels
    texture_angle: float
    caption: str

    @property
    def label(self):
        return class_index(self.shapes[0].shape, self.shapes[0].colour)


def sample_scene(seed, index, max_objects=3, min_size="small", plain_background=False,
                 centred=False, upright=False):
    """The scene of example `index` of the data set made with `seed`.

    max_objects < 3 caps the object count after it is drawn, a size below min_size is
    raised to it, plain_background replaces the drawn texture by none, centred puts the
    shape in the centre cell (only with max_objects=1) and upright drops its rotation; each
    replaces a drawn value after the draw, so the random stream (and every scene of the
    defaults) is unchanged: a 1-object scene is the default scene's first object on the
    same background.
    """
    if centred and max_objects != 1:
        raise ValueError("centred shapes need max_objects=1 (one shape a scene).")
    rng = np.random.default_rng([seed, index])
    count = min(int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])), max_objects)
    cells = [tuple(c) for c in rng.permutation([(r, c) for r in range(3) for c in range(3)])]
    shapes = []
    for cell in cells:
        if len(shapes) == count:
            break
        if centred:
            cell = (1, 1)
        size = max(str(rng.choice(list(SIZES))), min_size, key=list(SIZES).index)
        radius = float(rng.uniform(*SIZES[size]))
        # Jittered about the cell's centre, and never out of the image (the clamp keeps
        # the centre inside its cell: radius + 0.01 < 1/3).
        centre = tuple(float(np.clip((c + 0.5) / 3 + rng.uniform(-CELL_JITTER, CELL_JITTER),
                                     radius + 0.01, 1 - radius - 0.01))
                       for c in (cell[1], cell[0]))
        shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
        angle = float(rng.uniform(0, 2 * np.pi))  # drawn even when upright: same stream
        candidate = Shape(shape=shape, colour=colour, size=size, radius=radius, centre=centre,
                          cell=cell, angle=0.0 if upright else angle)
        # Shapes never touch, so every object named in the caption is visible whole.
        if all(np.hypot(centre[0] - s.centre[0], centre[1] - s.centre[1])
               > radius + s.radius + 0.02 for s in shapes):
            shapes.append(candidate)
    shapes.sort(key=lambda s: -s.radius)
    background = str(rng.choice(list(BACKGROUNDS)))
    texture = str(rng.choice(list(TEXTURES)))
    if plain_background:
        texture = "plain"
    period = float(rng.uniform(3.0, 8.0))
    angle = float(rng.uniform(0, np.pi))
    phrases = [s.phrase for s in shapes]
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    caption = template.format(objects=objects, texture=TEXTURES[texture], background=background)
    return Scene(shapes=tuple(shapes), background=background, texture=texture,
                 texture_period=period, texture_angle=angle, caption=caption)


def _background(scene, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    period, angle = scene.texture_period, scene.texture_angle
    u = x * np.cos(angle) + y * np.sin(angle)
    if scene.texture == "plain":
        t = np.zeros_like(x)
    elif scene.texture == "stripes":
        t = np.clip(2.0 * np.sin(2 * np.pi * u / period), -1, 1)
    elif scene.texture == "checks":
        t = np.clip(4.0 * np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period), -1, 1)
    elif scene.texture == "dots":
        dx = (x % period) - period / 2
        dy = (y % period) - period / 2
        t = 2 * np.clip(0.5 - (np.hypot(dx, dy) - period / 4), 0, 1) - 1
    else:  # a gradient across the image, with faint fine stripes across it
        ramp = 2 * u / (size * (abs(np.cos(angle)) + abs(np.sin(angle)))) - 1
        t = 0.7 * ramp + 0.3 * np.sin(2 * np.pi * (x * np.sin(angle) - y * np.cos(angle)) / period)
    tone = np.asarray(BACKGROUNDS[scene.background], np.float32)
    return tone + TEXTURE_AMPLITUDE * t[..., None]


def _vertices(shape, cx, cy, r, angle):
    if shape == "star":
        k = np.arange(10)
        radii = np.where(k % 2 == 0, r, 0.45 * r)
    else:
        k = np.arange({"square": 4, "triangle": 3, "hexagon": 6}[shape])
        radii = np.full(len(k), r)
    theta = angle + 2 * np.pi * k / len(k)
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _polygon_distance(px, py, vertices):
    """Signed distance (negative inside) from points to a closed polygon, concave or not."""
    nearest = np.full(px.shape, np.inf, np.float32)
    inside = np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, 1, axis=0)):
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        nearest = np.minimum(nearest, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = ax + (py - ay) * ex / ey
        inside ^= crosses & (px < x_cross)
    return np.where(inside, -1.0, 1.0) * np.sqrt(nearest)


def _outline_colour(rgb):
    rgb = np.asarray(rgb, np.float32)
    # Dark outlines on light fills, light ones on dark fills, so the outline always shows.
    return rgb * 0.45 if rgb.mean() > 80 else rgb + 110


def render(scene, size):
    """The scene as a [size, size, 3] uint8 array."""
    image = _background(scene, size)
    outline_width = max(1.0, size / 512)
    for s in scene.shapes:
        cx, cy, r = s.centre[0] * size, s.centre[1] * size, s.radius * size
        # Only the shape's bounding box (plus a margin for anti-aliasing) is evaluated.
        x0, x1 = int(max(cx - r - 2, 0)), int(min(cx + r + 3, size))
        y0, y1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, size))
        py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        if s.shape == "circle":
            distance = np.hypot(px - cx, py - cy) - r
        else:
            distance = _polygon_distance(px, py, _vertices(s.shape, cx, cy, r, s.angle))
        fill = np.clip(0.5 - distance, 0, 1)[..., None]
        # The outline is the band of the given width just inside the edge.
        band = np.abs(distance + outline_width / 2) - outline_width / 2
        outline = (np.clip(0.5 - band, 0, 1) * np.clip(0.5 - distance, 0, 1))[..., None]
        patch = image[y0:y1, x0:x1]
        patch = patch * (1 - fill) + np.asarray(COLOURS[s.colour], np.float32) * fill
        image[y0:y1, x0:x1] = patch * (1 - outline) + _outline_colour(COLOURS[s.colour]) * outline
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_png(pixels):
    buffer = io.BytesIO()
    # Lossless, so the thin outlines and textures survive exactly; level 1 keeps builds fast.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_example(seed, index, size, **variant):
    """(png bytes, caption, label) of example `index`; what the builder stores.

    variant: sample_scene's options (max_objects, min_size, plain_background, centred,
    upright)."""
    scene = sample_scene(seed, index, **variant)
    return encode_png(render(scene, size)), scene.caption, scene.label
