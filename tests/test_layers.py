"""The package's layers: no module imports a module of a layer above its own.

Bottom to top, as in the README's architecture section. A module outside every layer fails
too, so a new module has to be placed.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("distree_kernels",),
    ("distree.errors", "distree.preprocessing", "distree.data"),
    ("distree.models",),
    ("distree.policies",),
    ("distree.run_dir", "distree.samples", "distree.artifacts"),
    ("distree.losses", "distree.training"),
    ("distree.costs", "distree.calibration", "distree.risk", "distree.risk_grid", "distree.inference",
     "distree.run_settings", "distree.run_report", "distree.plan"),
    ("distree.evaluation",),
    ("distree.report", "distree.runtime", "distree.export", "distree.experiment", "distree.levers", "distree.serve"),
    ("distree.commands", "distree.cli", "distree.__main__", "distree"),
]


def layer(module: str) -> int | None:
    """The layer of a module: that of the longest layer name it falls under."""
    found = [(len(n), i) for i, names in enumerate(LAYERS) for n in names if module == n or module.startswith(n + ".")]
    return max(found)[1] if found else None


def modules():
    for package in ("distree", "distree_kernels"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def imported(path: Path, module: str):
    """Every distree or distree_kernels module `path` imports, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            yield target
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("module, path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_module_imports_a_higher_layer(module, path):
    own = layer(module)
    assert own is not None, f"{module} is in no layer; add it to LAYERS and the README"
    for target in imported(path, module):
        if target.split(".")[0] in ("distree", "distree_kernels"):
            assert layer(target) <= own, f"{module} (layer {own}) imports {target} (layer {layer(target)})"


# Within one layer some packages must still not import each other: what both need lies below them.
APART = [
    ("distree.runtime", "distree.export"),
    ("distree.export", "distree.runtime"),
    ("distree.runtime", "distree.report"),  # the runtime's plot is drawn from the command layer
]


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("importer, forbidden", APART, ids=lambda v: v)
def test_layer_neighbours_that_stay_apart(importer, forbidden):
    found = [f"{module} imports {target}" for module, path in modules() if under(module, importer)
             for target in imported(path, module) if under(target, forbidden)]
    assert not found, "; ".join(found)


def test_a_violation_is_found(tmp_path):
    """An upward import, absolute or relative, is seen and ranks above the importer."""
    path = tmp_path / "plan.py"
    path.write_text("from distree.report import write_report\nfrom ..evaluation import evaluate_run\n")
    targets = list(imported(path, "distree.runtime.plan"))
    assert targets == ["distree.report", "distree.evaluation"]
    assert layer("distree.evaluation") > layer("distree.run_dir")
    assert layer("distree_kernels.ops") < layer("distree.models.student")
