"""The rules of the house that no other test keeps: module size, one-way imports, the README's layout
table and the files docstrings cite. Each reads the source tree; none imports the project."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("geoloc", "analysis")
MAX_LINES = 400

# The layers of geoloc/, top to bottom: a module may import its own layer and the layers below it.
# Top-level modules that are entry points (the command line, the published alias) sit above all.
LAYERS = [
    ("entry", ("geoloc.train", "geoloc.model")),
    ("tuning", ("geoloc.tuning",)),
    ("run", ("geoloc.run",)),
    ("study", ("geoloc.study",)),
    ("tasks", ("geoloc.tasks",)),
    ("parts", ("geoloc.parts",)),
    ("data", ("geoloc.data",)),
    ("common", ("geoloc.common", "geoloc.geo")),
]


def modules(*packages: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (``__init__`` as the package)."""
    out = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: set[str], module_level: bool = False) -> set[str]:
    """The project modules a module imports (imports under ``if TYPE_CHECKING`` left out; with
    ``module_level``, those inside functions too). ``from pkg import module`` imports the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If)
        and "TYPE_CHECKING" in ast.unparse(branch.test)
        or module_level
        and isinstance(branch, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(branch)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def graph(module_level: bool = False) -> dict[str, set[str]]:
    found = modules(*PACKAGES)
    return {name: imported(name, path, set(found), module_level) for name, path in found.items()}


def layer(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_no_module_over_the_line_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules(*PACKAGES).values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for other in sorted(edges[module]):
            if state.get(other) == 1:
                return path + [module, other]
            if other not in state and (circle := visit(other, path + [module])):
                return circle
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (circle := visit(module, [])):
            start = circle.index(circle[-1])
            pytest.fail("import circle: " + " -> ".join(circle[start:]))


def test_every_geoloc_module_has_a_layer_and_imports_downward():
    wrong = []
    for module, others in graph().items():
        if not module.startswith("geoloc"):
            continue
        if module == "geoloc":
            continue
        rank = layer(module)
        assert rank is not None, f"{module} belongs to no layer of LAYERS (tests/test_house_rules.py)"
        wrong += [
            f"{module} ({LAYERS[rank][0]}) imports {o} ({LAYERS[layer(o)][0]})"
            for o in others
            if o.startswith("geoloc.") and layer(o) is not None and layer(o) < rank
        ]
    assert not wrong, "imports that run upward:\n" + "\n".join(wrong)


def test_study_definitions_and_analysis_need_neither_torch_nor_ray():
    """Validating a study file and analysing a folder run where torch and Ray are not needed: the study
    layer, the task definitions and the analysis import neither at module level (transitively)."""
    edges, sources = graph(module_level=True), modules(*PACKAGES)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges[m]
        return seen

    heavy = re.compile(r"^\s*(import|from)\s+(torch|ray)\b", re.M)
    for start in ["geoloc.study.studyfile", "geoloc.tasks", "analysis"]:
        culprits = sorted(m for m in reach(start) if heavy.search(sources[m].read_text(encoding="utf-8")))
        assert not culprits, f"{start} imports torch or Ray at module level through {culprits}"


def layout_paths() -> set[str]:
    """Every path the README's layout table names (its first column; ``a.py``, ``b.py`` after a folder
    path in one cell are that folder's files)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        folder = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if "/" in name:
                folder = name.rsplit("/", 1)[0] + "/" if not name.endswith("/") else name
                paths.add(name)
            else:
                paths.add(folder + name)
    return paths


def test_readme_layout_names_every_module_and_only_existing_paths():
    named = layout_paths()
    missing = [
        str(p.relative_to(ROOT))
        for p in modules(*PACKAGES).values()
        if str(p.relative_to(ROOT)) not in named and p.name not in ("__init__.py", "__main__.py")
    ]
    assert not missing, f"README's layout table does not name: {missing}"
    gone = sorted(p for p in named if not (ROOT / p).exists())
    assert not gone, f"README's layout table names paths that do not exist: {gone}"


CITED = re.compile(r"(?<![\w./-])((?:geoloc|analysis|tests|bench|studies|scripts)/[\w./-]*\w)")
PLACEHOLDER = re.compile(r"/[A-Z_]+(\.|/|$)")  # ``studies/NAME.yaml``: a pattern, not a file


def test_every_file_a_docstring_cites_exists():
    missing = []
    for path in [*modules(*PACKAGES).values(), *sorted((ROOT / "tests").glob("*.py")), ROOT / "tune_main.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            missing += [
                f"{path.relative_to(ROOT)}: {cited}"
                for cited in CITED.findall(doc)
                if not (ROOT / cited).exists() and not PLACEHOLDER.search(cited)
            ]
    assert not missing, "docstrings cite files that do not exist:\n" + "\n".join(missing)


def test_the_rules_can_fail(tmp_path, monkeypatch):
    """The checks above find what they look for: a circle, an upward import, a long module."""
    package = tmp_path / "geoloc"
    (package / "run").mkdir(parents=True)
    (package / "common").mkdir()
    (package / "__init__.py").write_text("")
    (package / "run" / "__init__.py").write_text("")
    (package / "common" / "__init__.py").write_text("")
    (package / "run" / "a.py").write_text("from geoloc.common import b\n")
    (package / "common" / "b.py").write_text("from geoloc.run import a\n" + "x = 1\n" * MAX_LINES)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGES", ("geoloc",))
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match="geoloc.common.b .common. imports geoloc.run.a .run."):
        test_every_geoloc_module_has_a_layer_and_imports_downward()
    with pytest.raises(AssertionError, match="geoloc/common/b.py"):
        test_no_module_over_the_line_limit()
