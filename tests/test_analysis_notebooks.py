"""Every notebook in notebooks/ runs top to bottom without an error (nbclient).

The kernel is the notebook's "python3" kernelspec; run from the project's virtual
environment, jupyter_client finds that environment's kernelspec (under sys.prefix)
and starts it with this interpreter, so the notebooks see the same packages as the
tests. PYTHONPATH carries the repository root for checkouts without an editable
install.

References:
  (none: a smoke test of the documentation notebooks).
"""

from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.slow  # an integration test: CI runs it; -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"learned_routing.ipynb", "head_reuse_and_neurons.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, "the notebook showed no figure"
