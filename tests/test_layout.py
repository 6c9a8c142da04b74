"""The package's rooms follow the pipeline and imports only go down it (the README's file map).

data -> normalisation -> metric -> model -> training | predictor -> postprocess -> submission -> inference_budget
-> parameters -> inference | refine -> training_budget -> explore -> notebook. tools/ (stand-ins and run tooling)
sits above them all and lib never imports it.
A module may import from its own room or from a lower layer; never from a higher layer, never sideways between
two rooms of one layer (training and the predictor know nothing of each other). Lazy imports inside functions count.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lib

LIB = Path(lib.__file__).parent
LAYERS: list[tuple[str, ...]] = [
    ("inputs",),  # Kaggle inputs found by content (standard library only: the setup cell embeds it)
    ("paths",),  # where things live (competition root, outputs/, Kaggle folders)
    ("data",),  # data.py, rle.py, volume.py: the competition layout and volumes on disk
    ("normalisation",),  # each kidney by its own intensity statistics, or the training set's
    ("metric",),
    ("model",),
    ("training", "predictor"),
    ("postprocess",),
    ("submission",),
    ("inference_budget",),  # projected hidden-test time per TTA choice and ensemble size
    ("parameters",),  # each notebook's parameters: names, defaults, kinds, help (reads the rooms below lazily)
    ("inference", "refine"),  # notebook 03 as functions; training rounds on refined (pseudo-)labels
    ("training_budget",),  # notebook 02's stages projected within Kaggle's session
    ("explore",),
    ("notebook",),
]
ROOM_OF_MODULE = {"rle": "data", "volume": "data"}


def room(module: str) -> str:
    """`lib.training.trainer` -> "training"; `lib.rle` -> "data"."""
    first = module.split(".")[1]
    return ROOM_OF_MODULE.get(first, first)


def layer(module: str) -> int:
    r = room(module)
    return next(i for i, rooms in enumerate(LAYERS) if r in rooms)


def lib_imports(path: Path, package: str = "lib") -> set[str]:
    """Every `package.*` module imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == package or a.name.startswith(f"{package}.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.startswith(f"{package}."):
                found.add(node.module)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(edges: list[tuple[str, str]]) -> list[str]:
    """The (importer, imported) pairs that go up a layer or sideways between rooms of one layer."""
    bad = []
    for importer, imported in edges:
        if importer == "lib" or room(importer) == room(imported):
            continue
        if layer(imported) > layer(importer):
            bad.append(f"{importer} imports {imported}: up from {room(importer)} to {room(imported)}")
        elif layer(imported) == layer(importer):
            bad.append(f"{importer} imports {imported}: sideways between {room(importer)} and {room(imported)}")
    return bad


def all_edges() -> list[tuple[str, str]]:
    return [(module_name(p), imported) for p in sorted(LIB.rglob("*.py")) for imported in sorted(lib_imports(p))]


def test_every_module_has_a_room() -> None:
    modules = [module_name(p) for p in LIB.rglob("*.py") if module_name(p) != "lib"]
    assert modules and all(isinstance(layer(m), int) for m in modules)


def test_imports_only_go_down_the_pipeline() -> None:
    edges = all_edges()
    assert len(edges) > 20  # the walk found the package's imports
    assert violations(edges) == []


def test_lib_never_imports_the_tools() -> None:
    """tools/ (synthetic data, v1-format archives, the pipeline, the Kaggle builder) is not shipped: lib stands alone."""
    tools = LIB.parent / "tools"
    assert (tools / "synthetic.py").is_file() and lib_imports(tools / "pipeline.py")  # the walk sees tools' lib imports
    assert {str(p.relative_to(LIB)): sorted(lib_imports(p, "tools")) for p in LIB.rglob("*.py")
            if lib_imports(p, "tools")} == {}


def test_the_check_catches_upward_and_sideways_imports() -> None:
    assert violations([("lib.postprocess", "lib.predictor")]) == []
    assert len(violations([("lib.predictor", "lib.postprocess")])) == 1  # up
    assert len(violations([("lib.training.fine_tune", "lib.predictor")])) == 1  # sideways
    assert violations([("lib.data", "lib.rle"), ("lib.training.fine_tune", "lib.training.trainer")]) == []


def test_postprocess_and_the_data_layer_do_not_import_torch() -> None:
    for module in ("lib.postprocess", "lib.data", "lib.metric", "lib.submission"):
        code = f"import {module}, sys; assert 'torch' not in sys.modules, {module!r}"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
