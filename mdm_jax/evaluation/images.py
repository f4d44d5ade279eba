"""Where evaluated images come from besides sampling: a folder of image files, and the
real images of a data set (for reference statistics)."""
import glob
import os

import numpy as np
from PIL import Image

from mdm_jax.data import pipeline as data_pipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_folder(folder, limit=None):
    """uint8 [N, H, W, 3] of the folder's images in name order (all one size)."""
    paths = sorted(p for p in glob.glob(os.path.join(os.path.expanduser(folder), "*"))
                   if p.lower().endswith(IMAGE_SUFFIXES) and os.path.basename(p) != "grid.png")
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    paths = paths[:limit]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise ValueError(f"The images in {folder} have several sizes ({sorted(sizes)}): "
                         "evaluate one size at a time.")
    return np.stack(images)


def dataset_batches(data_config, num_images, batch_size=64):
    """The first num_images images (float [-1, 1], NHWC) of a data set's configured split,
    in its seeded shuffled order, in batches; read by this process alone."""
    cfg = data_config.copy_and_resolve_references()
    cfg.num_epochs = 1
    cfg.caption_dropout = cfg.label_dropout = 0.0
    cfg.random_flip = False
    batch_size = min(batch_size, num_images)
    # text=None: images only, captions not even decoded.
    iterator = data_pipeline.make_iterator(cfg, global_batch_size=batch_size, text=None,
                                           process_index=0, process_count=1)
    seen = 0
    try:
        for batch in iterator:
            images = batch["images"][:num_images - seen]
            seen += len(images)
            yield images
            if seen >= num_images:
                return
    finally:
        iterator.close()
    if seen < num_images:
        raise ValueError(f"{cfg.dataset}/{cfg.split} has only {seen} images; ask for "
                         "fewer with --num_reference.")
