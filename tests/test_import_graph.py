"""The project's modules import one another without cycles, and only downwards.

Every ``.py`` under ``lib/qatlab``, ``workbook`` and ``benchmarks`` is parsed (ast;
nothing is imported) into a module graph. An edge ``a -> b`` is any import of ``b``
in ``a``: absolute or relative, at module level or inside a function (a deferred
import still needs ``b`` loaded while ``a`` runs, so it still closes a cycle), plus
the dependencies the import statement cannot show:

* a module that imports ``importlib`` and names a project module by a string literal
  (``"workbook.bench"``) or by an f-string's fixed prefix (``f"workbook.sim_{x}"``)
  depends on it: that is how the CLI dispatches to its commands;
* a module that uses ``runpy`` and names a script of ``benchmarks/`` (``"fpga.py"``)
  depends on it ("runs" edges: it executes that script in its own process).

Not edges: imports under ``if TYPE_CHECKING:`` (never executed), and plugin entries
``"package.module:attr"`` held in a registry (resolved when that plugin is asked
for, by which time both sides are loaded: ``intmodel``'s ``cuda`` backend).

The layering is the one docs/architecture.md states; ``LAYERS`` below is its source.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
# (folder, the module name its files get): benchmarks/ is a folder of scripts, named
# benchmarks.<stem> here; a script imports a sibling by its bare name (``import peer``).
SOURCES: tuple[tuple[str, str], ...] = (("lib/qatlab", "qatlab"), ("workbook", "workbook"), ("benchmarks", "benchmarks"))
SCRIPT_PACKAGES = frozenset({"benchmarks"})

# Lowest first. A module may import modules of its own unit, and of any unit in a
# lower layer. Units of one layer may import one another only where the layer says
# so (``peers``): hw, export and kernels are independent of each other. A qatlab
# module in no named unit belongs to the "product" layer (config, data, models,
# train and the modules they use).
PRODUCT = "qatlab.*"


@dataclass(frozen=True)
class Layer:
    name: str
    units: tuple[str, ...]
    peers: bool  # whether different units of this layer may import each other


LAYERS: tuple[Layer, ...] = (
    Layer("base", ("qatlab", "qatlab.atomic", "qatlab.timing"), peers=False),
    Layer("quant", ("qatlab.quant",), peers=False),
    Layer("nn", ("qatlab.nn",), peers=False),
    Layer("intmodel", ("qatlab.intmodel",), peers=False),
    Layer("backends", ("qatlab.hw", "qatlab.export", "qatlab.kernels"), peers=False),
    Layer("product", (PRODUCT,), peers=True),
    Layer("workbook", ("workbook",), peers=False),
    Layer("benchmarks", ("benchmarks",), peers=False),
)


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str  # path:line of the statement that makes the edge
    kind: str = "import"  # "import" or "runs"


# ---- discovery ------------------------------------------------------------------------


def discover(root: Path, sources: Iterable[tuple[str, str]] = SOURCES) -> dict[str, Path]:
    """Module name -> file, for every .py under each source folder (packages by __init__)."""
    modules: dict[str, Path] = {}
    for folder, name in sources:
        base = root / folder
        if not base.is_dir():
            raise FileNotFoundError(f"source folder {base} does not exist")
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
                continue
            parts = [name, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join(parts)
            # Python imports a package in preference to a same-named module beside it.
            if module not in modules or path.name == "__init__.py":
                modules[module] = path
    return modules


def shadowed(root: Path, sources: Iterable[tuple[str, str]] = SOURCES) -> list[Path]:
    """Modules ``x.py`` that a package ``x/`` beside them hides from every import."""
    return sorted(
        p
        for folder, _ in sources
        for p in (root / folder).rglob("*.py")
        if p.name != "__init__.py" and (p.with_suffix("") / "__init__.py").is_file()
    )


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of statements inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    lines.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return lines


def _package_of(module: str, path: Path) -> list[str]:
    parts = module.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def _resolve(name: str, module: str, modules: Mapping[str, Path], scripts: frozenset[str]) -> str | None:
    """The project module an absolute name refers to (a script's bare sibling name included)."""
    if name in modules:
        return name
    top = module.split(".")[0]
    if top in scripts and f"{top}.{name}" in modules:
        return f"{top}.{name}"
    return None


def _targets_of_from(node: ast.ImportFrom, module: str, path: Path, modules: Mapping[str, Path], scripts: frozenset[str]) -> set[str]:
    if node.level:
        package = _package_of(module, path)
        if node.level - 1 > len(package) - 1:
            raise ImportError(f"{path}:{node.lineno}: relative import beyond the top package")
        base = package[: len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found: set[str] = set()
    for alias in node.names:
        # ``from pkg import sub`` loads the submodule ``pkg.sub``; ``from pkg import name``
        # needs ``pkg`` itself.
        sub = _resolve(f"{target}.{alias.name}", module, modules, scripts) if alias.name != "*" else None
        owner = _resolve(target, module, modules, scripts) if node.level == 0 else (target if target in modules else None)
        if sub is not None:
            found.add(sub)
        elif owner is not None:
            found.add(owner)
    return found


def _dynamic_targets(tree: ast.AST, modules: Mapping[str, Path]) -> set[str]:
    """Project modules named by a string literal or an f-string's fixed prefix."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            found.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str) and "." in head.value:
                found.update(m for m in modules if m.startswith(head.value) and m != head.value)
    return found


def _uses(tree: ast.AST, name: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == name for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == name:
            return True
    return False


def _first_line(tree: ast.AST, wanted: str) -> int:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == wanted:
            return node.lineno
        if isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str) and wanted.startswith(head.value):
                return node.lineno
    return 0


def edges_of(
    module: str, path: Path, modules: Mapping[str, Path], root: Path = ROOT, scripts: frozenset[str] = SCRIPT_PACKAGES
) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_lines(tree)
    where = path.relative_to(root) if path.is_relative_to(root) else path
    edges: list[Edge] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = {t for a in node.names if (t := _resolve(a.name, module, modules, scripts)) is not None}
        elif isinstance(node, ast.ImportFrom):
            targets = _targets_of_from(node, module, path, modules, scripts)
        else:
            continue
        edges += [Edge(module, t, f"{where}:{node.lineno}") for t in sorted(targets)]
    if _uses(tree, "importlib"):
        for t in sorted(_dynamic_targets(tree, modules)):
            edges.append(Edge(module, t, f"{where}:{_first_line(tree, t)}"))
    if _uses(tree, "runpy"):
        by_file = {p.name: m for m, p in modules.items() if m.split(".")[0] in scripts}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in by_file:
                edges.append(Edge(module, by_file[node.value], f"{where}:{node.lineno}", kind="runs"))
    return edges


def build_graph(
    root: Path = ROOT, sources: Iterable[tuple[str, str]] = SOURCES, scripts: frozenset[str] = SCRIPT_PACKAGES
) -> tuple[dict[str, set[str]], list[Edge]]:
    """Module -> the modules it depends on, and every edge with where it comes from."""
    modules = discover(root, sources)
    edges = [e for m, p in modules.items() for e in edges_of(m, p, modules, root, scripts)]
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.src].add(e.dst)
    return graph, edges


# ---- cycles ---------------------------------------------------------------------------


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    succ = {v: sorted(ws) for v, ws in graph.items()}
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            nexts = succ.get(v, [])
            while i < len(nexts):
                w = nexts[i]
                i += 1
                if w not in index:
                    work.append((v, i))
                    work.append((w, 0))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
    return out


def strongly_connected_reference(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The plain definition: v and w share a component iff each reaches the other."""
    reach: dict[str, set[str]] = {}
    for v in graph:
        seen, todo = {v}, [v]
        while todo:
            for w in graph.get(todo.pop(), ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        reach[v] = seen
    comps: dict[frozenset[str], None] = {}
    for v in graph:
        comps[frozenset(w for w in reach[v] if v in reach.get(w, ()))] = None
    return [sorted(c) for c in comps]


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Components that hold a cycle: more than one module, or a module importing itself."""
    return [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in set(graph.get(c[0], ()))]


def cycle_path(component: list[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One closed walk through the component, first module repeated at the end."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in parent:
                parent[w] = v
                todo.append(w)
    raise ValueError(f"{component} is not a cycle")


def describe_cycles(graph: Mapping[str, set[str]], edges: list[Edge]) -> str:
    at: dict[tuple[str, str], list[str]] = {}
    for e in edges:
        at.setdefault((e.src, e.dst), []).append(e.where + ("" if e.kind == "import" else f" ({e.kind})"))
    lines = []
    for comp in cycles(graph):
        lines.append(f"cycle among {len(comp)} module(s): {', '.join(comp)}")
        path = cycle_path(comp, graph)
        for a, b in zip(path, path[1:]):
            lines.append(f"    {a} -> {b}  [{'; '.join(at[(a, b)])}]")
    return "\n".join(lines)


# ---- layers ---------------------------------------------------------------------------


def unit_of(module: str, layers: tuple[Layer, ...] = LAYERS) -> str:
    """The longest unit that is the module or a package above it; PRODUCT for other qatlab modules."""
    best = ""
    for layer in layers:
        for unit in layer.units:
            if unit == PRODUCT:
                continue
            # The root unit "qatlab" is its __init__ alone, not every qatlab module.
            whole = unit == "qatlab"
            if (module == unit or (not whole and module.startswith(unit + "."))) and len(unit) > len(best):
                best = unit
    if best:
        return best
    if module.startswith("qatlab."):
        return PRODUCT
    raise ValueError(f"module {module} belongs to no layer; add it to LAYERS and docs/architecture.md")


def layer_of(unit: str, layers: tuple[Layer, ...] = LAYERS) -> int:
    return next(i for i, layer in enumerate(layers) if unit in layer.units)


def layering_violations(edges: Iterable[Edge], layers: tuple[Layer, ...] = LAYERS) -> list[str]:
    """Import edges that go up a layer, or across units of a layer without peers.

    "runs" edges are exempt: ``workbook bench`` runs benchmark scripts as programs;
    the cycle check still covers them.
    """
    bad = []
    for e in edges:
        if e.kind != "import":
            continue
        a, b = unit_of(e.src, layers), unit_of(e.dst, layers)
        if a == b:
            continue
        la, lb = layer_of(a, layers), layer_of(b, layers)
        if lb < la or (lb == la and layers[la].peers):
            continue
        why = "a higher layer" if lb > la else f"another unit of the {layers[la].name} layer"
        bad.append(f"{e.where}: {e.src} ({a}) imports {e.dst} ({b}), {why}")
    return bad


# ---- the project ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> tuple[dict[str, set[str]], list[Edge]]:
    return build_graph()


def test_project_has_no_import_cycles(project):
    graph, edges = project
    if cycles(graph):
        pytest.fail("import cycles (move the shared piece into a module both can import):\n" + describe_cycles(graph, edges), pytrace=False)


def test_project_imports_only_downwards(project):
    _, edges = project
    bad = layering_violations(edges)
    if bad:
        pytest.fail("imports against the layering of docs/architecture.md:\n" + "\n".join(bad), pytrace=False)


def test_the_graph_sees_the_projects_known_edges(project):
    # Guards the parser: if these vanish, the checks above pass vacuously.
    graph, edges = project
    assert "qatlab.quant" in graph["qatlab.nn.fake_quant"] or any(
        e.src.startswith("qatlab.nn") and e.dst.startswith("qatlab.quant") for e in edges
    )
    assert "qatlab.export.session" in graph["qatlab.export.qdq"]  # relative: from .session import
    assert any(e.kind == "runs" and e.src == "workbook.bench" for e in edges)
    assert "workbook.bench" in graph["workbook.cli"]  # the CLI's dispatch by module name
    assert "benchmarks.peer" in graph["benchmarks.qat_step"]  # a script's bare sibling import


def test_no_module_is_hidden_by_a_package():
    hidden = shadowed(ROOT)
    assert not hidden, f"never imported (a package of the same name wins): {[str(p.relative_to(ROOT)) for p in hidden]}"


def test_library_never_imports_workbook_or_benchmarks(project):
    _, edges = project
    bad = [e for e in edges if e.src.startswith("qatlab") and not e.dst.startswith("qatlab")]
    assert not bad, bad


# ---- the checker on small trees -------------------------------------------------------


def _tree(tmp_path: Path, files: Mapping[str, str]) -> tuple[dict[str, set[str]], list[Edge]]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return build_graph(tmp_path, (("pkg", "pkg"), ("scripts", "scripts")), frozenset({"scripts"}))


def test_function_local_import_closes_a_cycle(tmp_path):
    graph, edges = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .b import X\n",
            "pkg/b.py": "X = 1\ndef f():\n    from pkg.a import g\n",
            "scripts/s.py": "",
        },
    )
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    text = describe_cycles(graph, edges)
    assert "pkg.a -> pkg.b" in text and "pkg/b.py:3" in text


def test_relative_forms_and_type_checking(tmp_path):
    graph, _ = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from . import sub\nfrom .sub.leaf import Y\n",
            "pkg/sub/__init__.py": "from .. import util\n",
            "pkg/sub/leaf.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\nY = 1\n",
            "pkg/util.py": "import os\nimport pkg.sub.leaf as l\n",
            "pkg/top.py": "from pkg.sub.leaf import *\n",
            "scripts/s.py": "",
        },
    )
    assert graph["pkg"] == {"pkg.sub", "pkg.sub.leaf"}
    assert graph["pkg.sub"] == {"pkg.util"}
    assert graph["pkg.sub.leaf"] == set()  # the TYPE_CHECKING import is not an edge
    assert graph["pkg.util"] == {"pkg.sub.leaf"}
    assert graph["pkg.top"] == {"pkg.sub.leaf"}
    assert cycles(graph) == []


def test_a_package_wins_over_a_module_of_the_same_name(tmp_path):
    graph, _ = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "import pkg.a\n",  # hidden by pkg/b/: not part of the graph
            "pkg/b/__init__.py": "",
            "scripts/s.py": "",
        },
    )
    assert graph["pkg.b"] == set() and cycles(graph) == []
    assert shadowed(tmp_path, (("pkg", "pkg"),)) == [tmp_path / "pkg" / "b.py"]


def test_self_import_is_a_cycle(tmp_path):
    graph, edges = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/me.py": "def f():\n    import pkg.me\n", "scripts/s.py": ""})
    assert cycles(graph) == [["pkg.me"]]
    assert "pkg.me -> pkg.me" in describe_cycles(graph, edges)


def test_dynamic_and_runpy_edges(tmp_path):
    graph, edges = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/cli.py": "import importlib\nM = 'pkg.cmd'\ndef f(x):\n    return importlib.import_module(f'pkg.sim_{x}')\n",
            "pkg/cmd.py": "import importlib\nPLUGIN = 'pkg.cli:main'\n",  # a plugin entry, not an edge
            "pkg/sim_a.py": "",
            "pkg/sim_b.py": "",
            "pkg/bench.py": "import runpy\nSCRIPTS = ('job.py',)\n",
            "scripts/job.py": "import sibling\nfrom pkg import bench\n",
            "scripts/sibling.py": "",
        },
    )
    assert graph["pkg.cli"] == {"pkg.cmd", "pkg.sim_a", "pkg.sim_b"}
    assert graph["pkg.cmd"] == set()
    assert graph["scripts.job"] == {"scripts.sibling", "pkg.bench"}
    assert [e.kind for e in edges if e.src == "pkg.bench"] == ["runs"]
    assert cycles(graph) == [["pkg.bench", "scripts.job"]]


def test_layering_rules():
    layers = (
        Layer("low", ("qatlab", "qatlab.quant"), peers=False),
        Layer("mid", ("qatlab.hw", "qatlab.export"), peers=False),
        Layer("product", (PRODUCT,), peers=True),
        Layer("app", ("workbook",), peers=False),
    )
    ok = [
        Edge("qatlab.hw.asic.sim", "qatlab.quant.spec", "x:1"),
        Edge("qatlab.hw.asic.sim", "qatlab.hw.workload", "x:2"),
        Edge("qatlab.train", "qatlab.config", "x:3"),  # product peers
        Edge("workbook.cli", "qatlab.train", "x:4"),
        Edge("qatlab.quant", "workbook.cli", "x:5", kind="runs"),  # runs edges are exempt
    ]
    assert layering_violations(ok, layers) == []
    bad = [
        Edge("qatlab.quant.ops", "qatlab.hw.workload", "a:1"),
        Edge("qatlab.hw.workload", "qatlab.export.qdq", "b:2"),
        Edge("qatlab.config", "workbook.spec", "c:3"),
        Edge("qatlab", "qatlab.quant", "d:4"),  # the root package is its __init__ only
    ]
    got = layering_violations(bad, layers)
    assert [g.split(":")[0] for g in got] == ["a", "b", "c", "d"]
    assert "another unit of the mid layer" in got[1] and "a higher layer" in got[2]
    with pytest.raises(ValueError, match="belongs to no layer"):
        unit_of("elsewhere.mod", layers)


# ---- Tarjan against the definition ----------------------------------------------------

graphs = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n).map(
        lambda pairs: {f"m{v}": {f"m{w}" for a, w in pairs if a == v} for v in range(n)}
    )
)


@given(graphs)
def test_tarjan_matches_the_definition(graph):
    assert sorted(strongly_connected(graph)) == sorted(strongly_connected_reference(graph))
    for comp in cycles(graph):
        path = cycle_path(comp, graph)
        assert path[0] == path[-1] and all(b in graph[a] for a, b in zip(path, path[1:]))


def test_tarjan_survives_a_long_chain():
    n = 5000  # deeper than Python's recursion limit
    graph = {f"m{i}": {f"m{i + 1}"} for i in range(n)} | {f"m{n}": {"m0"}}
    assert [len(c) for c in strongly_connected(graph)] == [n + 1]
    rng = random.Random(0)
    order = list(graph)
    rng.shuffle(order)
    assert len(strongly_connected({k: graph[k] for k in order})) == 1
