"""The package follows the pipeline: every module of src/phf imports only from its own stage or the
stages before it (imports inside functions and under TYPE_CHECKING count too), no module shadows a
name that phf exports, and ``import phf`` stays light."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import phf

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import from its own stage and from those before it; "phf" is the
# package's __init__ only (it and the CLI are the entry points: they may import anything).
STAGES = [
    ("shared", ("phf._version", "phf.errors", "phf.config", "phf.io")),
    ("data", ("phf.data",)),
    ("training", ("phf.training",)),
    ("evaluation", ("phf.evaluation",)),
    ("study", ("phf.study",)),
    ("entry points", ("phf", "phf.cli")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "phf").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def stage(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or (prefix != "phf" and module.startswith(prefix + ".")):
                return rank
    return None


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported phf module) for every import in the file, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from phf.data import stream` imports the module phf.data.stream
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in dict.fromkeys(found) if name == "phf" or name.startswith("phf.")]


def test_every_module_has_a_stage():
    assert MODULES, f"no modules under {SRC / 'phf'}"
    assert [m for m in MODULES if stage(m) is None] == [], "add the new module's package to STAGES"


def test_imports_point_only_downward():
    upward = []
    for module, path in MODULES.items():
        own = stage(module)
        for line, target in imports(module, path):
            if target not in MODULES:
                upward.append(f"{path.relative_to(SRC)}:{line}: {module} imports {target}, which does not exist")
            elif stage(target) > own:
                upward.append(
                    f"{path.relative_to(SRC)}:{line}: {module} ({STAGES[own][0]}) imports {target} "
                    f"({STAGES[stage(target)][0]}), a later stage"
                )
    assert upward == [], "\n".join(upward)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n\ndef f():\n    from phf.study import run_experiment\n    from . import stream\n"
        "    importlib.import_module('phf.cli')\n"
    )
    assert imports("phf.data.m", source) == [(4, "phf.study"), (5, "phf.data.stream"), (6, "phf.cli")]


def _phf_names() -> set[str]:
    """The functions phf/__init__.py defines and the names it exports lazily (_EXPORTS)."""
    tree = ast.parse((SRC / "phf" / "__init__.py").read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    return names


def test_no_module_shadows_a_name_of_phf():
    # `import phf.<name>` sets the attribute phf.<name> to the module, replacing the function.
    names = _phf_names()
    assert {"train", "eval", "evaluate", "Trainer", "build_report"} <= names
    shadows = sorted(m for m in MODULES if m.count(".") == 1 and m.split(".")[1] in names)
    assert shadows == []


def test_exports_resolve_to_what_they_name():
    assert set(phf.__all__) == _phf_names() | {"__version__"}
    for name in phf._EXPORTS:
        value = getattr(phf, name)
        assert value.__name__ == name and value.__module__.startswith("phf."), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        phf.nope  # noqa: B018


def test_import_phf_loads_no_stage_and_no_torch():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, phf; print(' '.join(sorted(sys.modules)))"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert [m for m in loaded if m.startswith("phf")] == ["phf", "phf._version"]
    assert "torch" not in loaded and "numpy" not in loaded
