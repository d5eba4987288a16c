#!/usr/bin/env python
"""Execute notebooks top to bottom, in place, and store their outputs (the committed outputs).

    python scripts/execute_notebooks.py notebooks/*.ipynb            # what `make notebooks` runs
    python scripts/execute_notebooks.py notebooks/01_*.ipynb --timeout 300

What it does, for each notebook:

* runs every cell with nbclient, with the notebook's own folder (``notebooks/``) as working directory,
  a per-cell ``--timeout`` (seconds), and ``store_widget_state=True``, so ipywidgets (sliders) are saved
  with their state and the outputs they showed, and render in the docs without a kernel;
* sets ``ODISTILL_PROFILE=tiny`` in the kernel's environment unless it is already set (the committed
  outputs come from the tiny CPU profile; ``ODISTILL_DEVICE`` is passed through if set);
* writes the executed notebook back to the same file, without per-cell timing metadata (so re-running
  an unchanged notebook gives a small diff), and prints its wall time;
* on an error, leaves the file untouched, prints the failing cell's error, goes on with the next notebook,
  and exits with status 1 at the end.

Which Python runs the cells: the interpreter running this script (``sys.executable``), always. The
notebooks' kernelspec name (``python3``) is resolved by a small KernelSpecManager that answers with
ipykernel's own spec for *this* interpreter, the same thing nbval's ``--nbval-current-env`` does. So no
kernelspec has to be installed, and a ``python3`` kernelspec from another environment (for example one
in ``~/.local/share/jupyter/kernels``) can never be picked up by mistake. Run the script with the
project's virtualenv (``.venv/bin/python scripts/execute_notebooks.py ...``, as the Makefile does); it
needs ``nbclient``, ``nbformat`` and ``ipykernel`` (all in the ``dev`` extra).

To run a notebook at another size, use papermill instead (the first code cell is tagged
``parameters``): ``papermill notebooks/01_forward_vs_reverse_kl.ipynb out.ipynb -p PROFILE full``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import ipykernel.kernelspec
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError


class CurrentEnvKernelSpecManager(KernelSpecManager):
    """Resolves every kernel name to an ipykernel running on this interpreter (``sys.executable``)."""

    def get_kernel_spec(self, kernel_name):
        return self.kernel_spec_class(
            resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
        )


def execute(path: Path, timeout: int) -> float:
    """Execute one notebook in place. Returns the wall time in seconds; raises on a failing cell."""
    nb = nbformat.read(path, as_version=4)
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=CurrentEnvKernelSpecManager()
    )
    client = NotebookClient(
        nb,
        km=kernel_manager,
        timeout=timeout,
        store_widget_state=True,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.pop("papermill", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to execute in place")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)

    os.environ.setdefault("ODISTILL_PROFILE", "tiny")  # the kernel inherits this environment
    print(
        f"python {sys.executable} | ODISTILL_PROFILE={os.environ['ODISTILL_PROFILE']}"
        f" | ODISTILL_DEVICE={os.environ.get('ODISTILL_DEVICE', '(notebook default)')}"
    )

    failed = []
    total = 0.0
    for path in args.notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            print(f"[skip] {path}: not a notebook file")
            continue
        print(f"[run ] {path} ...", flush=True)
        try:
            elapsed = execute(path, args.timeout)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
            failed.append(path)
            print(f"[FAIL] {path} (left unchanged)\n{error}", file=sys.stderr)
            continue
        total += elapsed
        print(f"[ ok ] {path}  {elapsed:.1f} s")

    print(f"{len(args.notebooks) - len(failed)} notebook(s) executed in {total:.1f} s, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
