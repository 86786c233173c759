"""Every notebook in examples/ runs from top to bottom in smoke mode (``CI=1``).

Each notebook sets ``smoke_test = "CI" in os.environ`` (Pyro's convention) and then runs a few
steps of each fit. The notebooks are executed with nbclient in a kernel of the interpreter that
runs the tests, whatever kernelspecs the machine has: a kernelspec for ``sys.executable`` is
written to a temporary Jupyter path. A cell that raises fails the test, with the cell's traceback.
"""

from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel import kernelspec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL = "implicit-reparam-tests"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that starts ``sys.executable -m ipykernel_launcher``, found first."""
    root = tmp_path_factory.mktemp("jupyter")
    kernelspec.write_kernel_spec(path=root / "kernels" / KERNEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield KERNEL


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebook in {EXAMPLES}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, kernel_name, monkeypatch):
    monkeypatch.setenv("CI", "1")  # the kernel inherits the environment
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed in smoke mode:\n{error}", pytrace=False)
    source = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert 'smoke_test = "CI" in os.environ' in source
