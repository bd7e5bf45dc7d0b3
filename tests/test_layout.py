"""The layout rules (ARCHITECTURE.md), read from the source: no import cycle anywhere (imports inside functions
count), nothing imports the training loop to get a model or a step, step.py stands on models/losses/config only, the
kernels import nothing but each other and the errors and files modules, the product reaches no lab code (models of
cost and memory, the compile gate, the benchmarks: the lab reads the product, never the reverse), and no module
reaches a sibling through importlib (but the lab's replay of recorded launches, which finds kernels by name).

The import graph is built statically with `ast` over vidgan_fast/, kernels/ and benchmarks/ (installed as
vidgan_fast.kernels and vidgan_fast.benchmarks), so a cycle is found even where a lazy import hides it at run time.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"vidgan_fast": ROOT / "vidgan_fast", "vidgan_fast.kernels": ROOT / "kernels",
            "vidgan_fast.benchmarks": ROOT / "benchmarks"}
LAB = ("vidgan_fast.lab", "vidgan_fast.benchmarks")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:      # `from a.b import c` is a.b.c or a.b
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != "vidgan_fast":
                targets.add(candidate)
    return targets


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    edges = graph()
    assert "vidgan_fast.step" in edges and "vidgan_fast.kernels.common" in edges      # the walk saw everything
    assert cycles(edges) == []


def test_only_the_command_line_imports_the_training_loop():
    importers = sorted(name for name, targets in graph().items() if "vidgan_fast.train" in targets)
    assert importers == ["vidgan_fast.cli"]


def test_one_step_stands_on_the_model_definitions_only():
    allowed = {"vidgan_fast.models", "vidgan_fast.losses", "vidgan_fast.config", "vidgan_fast.profiling",
               "vidgan_fast.errors"}
    assert graph()["vidgan_fast.step"] <= allowed


def test_kernels_import_no_model_and_no_autograd():
    """kernels/ stands alone, except for the project's one way to write a file (the autotuner's tile cache)."""
    paths = modules()
    helpers = {"vidgan_fast.files", "vidgan_fast.errors"}
    for name, targets in graph().items():
        if name.startswith("vidgan_fast.kernels"):
            assert all(t.startswith("vidgan_fast.kernels") or t in helpers for t in targets), (name, targets)
            assert "torch.autograd" not in paths[name].read_text() and "torch.nn" not in paths[name].read_text()


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_training_path_imports_no_lab_code():
    """Everything `vidgan train` reaches (the loop, the fast path, checks, checkpoints) imports no cost or memory
    model, compile gate, launch recorder or benchmark, even lazily; only the command line reaches the lab, for its
    lab commands (bench, kernels)."""
    edges = graph()
    assert not [m for m in reachable(edges, "vidgan_fast.train") if m.startswith(LAB)]
    importers = {name for name, targets in edges.items() if any(t.startswith(LAB) for t in targets)}
    assert {name for name in importers if not name.startswith(LAB)} == {"vidgan_fast.cli"}


def test_no_sibling_is_reached_through_importlib():
    replay = {"vidgan_fast.lab.processes", "vidgan_fast.lab.sectors"}     # run a recorded kernel / call by name
    for name, path in modules().items():
        text = path.read_text()
        if name not in replay:
            assert "importlib.import_module" not in text and "__import__(" not in text, name
