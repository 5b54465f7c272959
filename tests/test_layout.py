"""The import direction docs/design.md promises ("What each part owns, and which way imports go"):
raytrain8m is one package per stage; a module imports (at the top or inside a function) only
modules of its own package or an earlier one. Fast: reads the source, imports nothing."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raytrain8m"

# In order: each layer is one package (one stage), `commands` also holds the `python -m` door.
LAYERS = [
    ("runtime", {"runtime"}),
    ("data", {"data"}),
    ("models", {"models"}),
    ("records", {"records"}),
    ("train", {"train"}),
    ("sweep", {"sweep"}),
    ("select", {"select"}),
    ("compose", {"compose"}),
    ("pipeline", {"pipeline"}),
    ("commands", {"commands", "__main__"}),
]
# What a layer must not import at all, wherever it is imported.
FORBIDDEN = {"data": {"tensorflow", "keras", "mlflow"}, "models": {"ray", "mlflow"}}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        if parts != ["__init__"]:
            found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    top = module.split(".")[0]
    matches = [index for index, (_, names) in enumerate(LAYERS) if top in names]
    assert len(matches) == 1, f"raytrain8m.{module} is in {len(matches)} layers of tests/test_layout.py"
    return matches[0]


def _imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at the top or in a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # a submodule, if it is one
    return names


def test_every_module_is_in_exactly_one_layer():
    for module in _modules():
        _layer(module)


def test_every_module_sits_in_its_stage_package():
    loose = [path.name for path in PACKAGE.glob("*.py") if path.name not in {"__init__.py", "__main__.py"}]
    assert not loose, f"modules outside a stage package: {loose}"


def test_no_module_imports_one_of_a_later_layer():
    modules = _modules()
    later = set()
    for module, path in modules.items():
        for name in _imports(path):
            if not name.startswith("raytrain8m."):
                continue
            target = name.removeprefix("raytrain8m.")
            if target not in modules and target.rpartition(".")[0] in modules:
                target = target.rpartition(".")[0]  # `from raytrain8m.x import name`: x
            if target in modules and _layer(target) > _layer(module):
                later.add(f"raytrain8m.{module} ({LAYERS[_layer(module)][0]}) imports raytrain8m.{target} "
                             f"({LAYERS[_layer(target)][0]})")
    assert not later, "\n".join(sorted(later))


def test_data_and_models_keep_to_their_own_dependencies():
    for module, path in _modules().items():
        forbidden = FORBIDDEN.get(LAYERS[_layer(module)][0], set())
        used = {name.split(".")[0] for name in _imports(path)} & forbidden
        assert not used, f"raytrain8m.{module} imports {sorted(used)}"


def test_the_layers_are_the_ones_docs_design_lists():
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    for name, _ in LAYERS:
        assert f"**{name}**" in design, f"docs/design.md does not name the layer {name}"


def test_the_training_config_is_pure_and_the_loop_never_imports_the_driver():
    import subprocess
    import sys

    heavy = subprocess.run([sys.executable, "-c", "import sys, raytrain8m.train.config; "
                            "print(sorted({'ray', 'mlflow', 'tensorflow', 'keras'} & set(sys.modules)))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]", f"importing raytrain8m.train.config loads {heavy}"
    modules = _modules()
    for worker_side in ("train.loop", "train.worker", "train.prefetch", "train.config"):
        assert "raytrain8m.train.driver" not in _imports(modules[worker_side]), f"{worker_side} imports the driver"
