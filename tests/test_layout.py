"""The layout holds: the teaching core (processes, networks, data) imports no plumbing, the plumbing imports
nothing above it (so no call climbs from it back up into the rooms that use it), no module imports a script,
and the imports have no cycle. Read from the source with ast, every import counted, including those inside
functions."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"process", "ddpm", "ddgm", "cond", "vpred", "flow", "edm", "unet", "data", "formats", "datatypes",
        "synthetic"}  # processes, networks, data
SCRIPTS = {"main", "sample", "anomaly", "bench.bench", "bench.synthetic_gain", "bench.ablate",
           "plumbing.ship"}  # what a user runs


def modules() -> dict:
    """{module name: path} of the repository's own Python modules (tests excluded)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "docs", "notebooks", "data")
                   and not d.startswith("contents_")]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def imports_of(path: str, known: set) -> set:
    """The repository's modules that the file imports anywhere in it (top level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


GRAPH = {m: imports_of(p, set(modules())) - {m} for m, p in modules().items()}


# Every top-level file has one of these roles; a new one needs a role, not just a place.
PROCESS_FILES = {"process", "ddpm", "ddgm", "cond", "vpred", "flow", "edm"}  # their base, and one paper's process each
ROOMS = {"unet", "data", "formats", "datatypes", "synthetic", "models", "figures"}


def test_the_top_level_holds_the_core_and_the_scripts():
    top = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    assert {"ddpm", "ddgm", "cond", "unet", "data", "main"} <= top
    assert top <= PROCESS_FILES | ROOMS | {"main", "sample", "anomaly", "metrics"}, top - PROCESS_FILES - ROOMS
    assert len(top - PROCESS_FILES) <= 11, sorted(top)


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_takes_no_plumbing(module):
    assert not {m for m in GRAPH[module] if m.startswith("plumbing")}, GRAPH[module]
    assert not GRAPH[module] & (SCRIPTS | {"models", "figures", "metrics", "bench"})


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("plumbing") and m not in SCRIPTS))
def test_the_plumbing_imports_nothing_above_it(module):
    """Only its own files and datatypes (DataError): the loop calls the plumbing, never the other way round."""
    assert all(m.startswith("plumbing") or m == "datatypes" for m in GRAPH[module]), GRAPH[module]


def test_no_module_imports_a_script():
    """The core, the plumbing and the shared rooms never import a script; the bench, a script itself that races
    main.py's recipe (its EMA), may."""
    importers = {m: sorted(s for s in GRAPH[m] if s in SCRIPTS) for m in GRAPH}
    assert {m: s for m, s in importers.items() if s and m.split(".")[0] != "bench"} == {}


def test_the_imports_have_no_cycle():
    """Depth-first search; a module met again while still on the path closes a cycle."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(GRAPH[m]):
            assert state.get(n) != "open", " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"
    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])


def test_the_graph_sees_the_imports_it_guards():
    """The test above would pass on an empty graph: check that it reads known edges."""
    assert "ddpm" in GRAPH["cond"] and "plumbing.run" in GRAPH["main"] and "process" in GRAPH["ddpm"]
