"""notebooks/sample.ipynb runs top to bottom (nbclient, a real kernel): it converts the
tiny reference-format model, samples two prompts and shows the grid of every level."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from reference_model import CAPTIONS
from training_runs import ROOT

# End to end: real training runs and commands (python -m pytest -m 'not slow' skips them).
pytestmark = pytest.mark.slow

NOTEBOOK = os.path.join(ROOT, "notebooks", "sample.ipynb")


def test_notebook_converts_samples_and_shows_every_level(reference_model, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    files, output = reference_model["dir"], str(tmp_path / "samples")
    # As papermill does: the test's values after the notebook's defaults.
    values = dict(CHECKPOINT=str(tmp_path / "run"), REFERENCE_CONFIG=str(files / "model.yaml"),
                  REFERENCE_CHECKPOINT=str(files / "vis_model.pth"),
                  TEXT_ENCODER_DIR=str(files / "t5"), PROMPTS=CAPTIONS[:2], NUM_STEPS=2,
                  GUIDANCE=2.0, BATCH_SIZE=8, OUTPUT=output)  # 8: the tests' fake devices
    parameters.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())

    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert sorted(os.listdir(output)) == ["00000.png", "00001.png", "grid.png"]
    shown = notebook.cells[-1].outputs
    assert any("image/png" in out.get("data", {}) for out in shown)
    # Two rows (one per prompt) of the 64² level beside the 16² level scaled up.
    assert any(out.get("data", {}).get("text/plain") == "(128, 128)" for out in shown)
