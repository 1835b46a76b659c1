"""The package's layers only point down (docs/ARCHITECTURE.md): models <- weights <- engine <- commands.

Every `import` / `from ... import` of every module is read from its source (lazy imports inside
functions count too: they are dependencies all the same), resolved to a part of the package, and
checked against the layer table below.
"""

import ast
from pathlib import Path

import cast_video

PACKAGE = Path(cast_video.__file__).parent

# A part may import parts of a lower layer, and itself. Parts of one layer do not import each other,
# except in the application layer, whose parts (training engine, pre-training, demo, benchmark, deploy) build
# on one another.
LAYERS = {
    "errors": 0,
    "files": 1, "config_utils": 1, "normalization": 1, "seeds": 1,
    "models": 2, "data": 2,
    "weights": 3, "precision": 3,
    "engine": 4, "pretrain": 4, "demo": 4, "benchmark": 4, "deploy": 4,
    "commands": 5,
    "cli": 6,
    "__main__": 7, "__init__": 7,
}
APPLICATION = 4


def _part(module: str) -> str:
    """cast_video.models.cast -> models; cast_video -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Parts of the package (rooted at `root`) that the module at `path` imports."""
    rel = path.relative_to(root.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {_part(n) for n in names if n == "cast_video" or n.startswith("cast_video.")}
    return found


def layer_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        own = "__init__" if rel == Path("__init__.py") else rel.parts[0].removesuffix(".py")
        if own not in LAYERS:
            problems.append(f"{rel}: part {own!r} has no layer in tests/test_layers.py")
            continue
        for other in sorted(_imports(path, root) - {own}):
            mine, theirs = LAYERS[own], LAYERS.get(other, 99)
            if theirs > mine or (theirs == mine and mine != APPLICATION):
                problems.append(f"{rel} imports {other} (layer {theirs}, its own layer is {mine})")
    return problems


def test_imports_only_point_down():
    assert layer_violations() == []


def test_models_import_nothing_above_them():
    """The rule the structure issue names: models/ imports none of weights, engine, data or commands."""
    for path in (PACKAGE / "models").rglob("*.py"):
        assert not _imports(path) & {"weights", "engine", "data", "commands", "demo", "pretrain", "cli"}, path


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """An upward import hidden in a method, written relatively, is found (the circle this test guards)."""
    pkg = tmp_path / "cast_video"
    (pkg / "models").mkdir(parents=True)
    (pkg / "weights").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "weights" / "__init__.py").write_text("from ..models import cast\n")
    (pkg / "models" / "cast.py").write_text("class CAST:\n    def load(self):\n        from ..weights import x\n")
    (pkg / "models" / "__init__.py").write_text("from . import cast\n")
    problems = layer_violations(pkg)
    assert problems == ["models/cast.py imports weights (layer 3, its own layer is 2)"]
    (pkg / "models" / "cast.py").write_text("from .. import weights\n")
    assert layer_violations(pkg) == ["models/cast.py imports weights (layer 3, its own layer is 2)"]
