"""A request's files: the PNGs the sample command writes (images.write_images: NNNNN.png
of the highest level and grid.png of every level) and a zip of them to download.

Each request gets its own numbered folder; only the newest `keep` are kept, so a server
that runs for weeks does not fill its disk (the page has its own copies by then).
"""
import dataclasses
import itertools
import os
import shutil
import zipfile
from typing import List

from mdm_jax.sampling import images


@dataclasses.dataclass
class Result:
    grid: str               # grid.png: every level side by side, a row per sample
    samples: List[str]      # NNNNN.png: each sample's highest level
    archive: str            # samples.zip of all of them


class ResultFolders:
    def __init__(self, root, keep=16):
        self._root, self._keep = root, keep
        self._numbers = itertools.count()

    def write(self, levels):
        """The request's PNGs and their zip in a new folder; older folders beyond the
        newest `keep` are removed."""
        folder = os.path.join(self._root, f"{next(self._numbers):06d}")
        samples = images.write_images(folder, levels)
        grid = os.path.join(folder, "grid.png")
        archive = os.path.join(folder, "samples.zip")
        with zipfile.ZipFile(archive, "w") as out:
            for path in samples + [grid]:
                out.write(path, os.path.basename(path))
        self._prune()
        return Result(grid, samples, archive)

    def _prune(self):
        for name in sorted(os.listdir(self._root))[:-self._keep]:
            shutil.rmtree(os.path.join(self._root, name), ignore_errors=True)
