"""The layers of src/python/lpm, held by import-linter's contract rather than only described:

- the three programs' packages (the CLI, the controller, the agent) and the demo app never import each other;
- any of them may use the checkpoint storage;
- storage uses only the shared lower layers: the API (CRD models, views, the agent's generated gRPC messages)
  and the application helpers (flags, logging, clock), which are independent of each other.

import-linter reads the source files and imports none of them. The generated protobuf modules are not among
them (the build makes them); importing them is what lpm.api.agent.v1 is for, below every program.
"""

from __future__ import annotations

import sys
from pathlib import Path

from importlinter.cli import lint_imports

CONTRACT = """
[importlinter]
root_package = lpm

[importlinter:contract:layers]
name = programs above storage above the shared API and app helpers
type = layers
containers = lpm
layers =
    cli | controller | agent | demo
    storage
    api | app
"""


def test_the_packages_keep_their_layers(tmp_path: Path) -> None:
    config = tmp_path / "importlinter.ini"
    config.write_text(CONTRACT)
    sys.path.insert(0, str(Path("src/python").resolve()))
    try:
        assert (
            lint_imports(config_filename=str(config), no_cache=True) == 0
        ), "the broken contract is in the captured stdout"
    finally:
        sys.path.pop(0)
