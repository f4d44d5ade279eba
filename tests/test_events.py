"""TensorBoard event files written by mdm_jax.training.events, read by TensorBoard's own
loader (the one its server uses)."""
import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from mdm_jax.training.events import EventWriter


def test_tensorboard_reads_back_the_scalars_and_images(tmp_path):
    writer = EventWriter(tmp_path / "tensorboard")
    for step in (1, 2, 3):
        writer.scalar("loss", 1.0 / step, step)
    grid = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    writer.image("samples/res32", grid, 3)
    writer.close()

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [1, 2, 3]
    np.testing.assert_allclose([e.value for e in losses], [1.0, 0.5, 1.0 / 3], rtol=1e-6)
    (image,) = events.Images("samples/res32")
    assert (image.step, image.height, image.width) == (3, 6, 10)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                  grid)


def test_files_closed_at_each_flush_read_back_as_one_log(tmp_path):
    # What a gs:// run does every minute (an object appears when closed), here at every flush.
    writer = EventWriter(tmp_path / "tensorboard", file_seconds=0)
    for step in range(1, 6):
        writer.scalar("loss", float(step), step)
        writer.flush()
    writer.close()
    assert len(list((tmp_path / "tensorboard").iterdir())) == 5

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(s, float(s)) for s in
                                                                   range(1, 6)]
