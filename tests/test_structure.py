"""The package's structure: its modules import each other without a cycle, and importing any of them
changes nothing process-wide (the explicit process.tune_process() does that, for the entry points).

The import graph counts every import of a package module, wherever it is written: at module level
and inside functions. A cycle closed by an import inside a function is still a cycle (model.py and
weights.py had one, hidden that way); deferring an import of a heavy optional library (tqdm,
matplotlib, datasets) is fine and not part of this graph, which holds package modules only.
"""
import ast
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minitinybert"


def package_imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """The package modules that the file at `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):                   # import minitinybert.x [as y]
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 0:                            # from minitinybert[.x] import y
                if not parts or parts[0] != package:
                    continue
                parts = parts[1:]
            elif node.level > 1:                           # above the package: not ours
                continue
            if parts:                                      # from .x import y
                found.add(parts[0])
            else:                                          # from . import x, y
                found.update(alias.name for alias in node.names)
    return (found & modules) - {path.stem}


def import_graph(directory: Path) -> dict[str, set[str]]:
    files = sorted(p for p in directory.glob("*.py") if p.stem != "__init__")
    modules = {p.stem for p in files}
    return {p.stem: package_imports(p, directory.name, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"model", "weights", "params", "kernels", "runtime", "process"} <= set(graph)
    assert "params" in graph["model"] and "model" in graph["weights"]     # the walk sees the edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("import os\n\ndef thing():\n    from pkg import c\n    return c\n")
    (pkg / "c.py").write_text("import pkg.a as a\nfrom . import b as unused  # noqa\n")
    (pkg / "d.py").write_text("from .. import elsewhere\nfrom .a import thing\n")
    graph = import_graph(pkg)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a", "b"}, "d": {"a"}}
    assert find_cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "b"])
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


PROBE = textwrap.dedent("""
    import ctypes, importlib, json, os, pkgutil

    # every C function looked up through ctypes (CDLL.__getattr__ goes through __getitem__)
    looked_up = []
    _getitem = ctypes.CDLL.__getitem__
    def spy(self, name):
        looked_up.append(name)
        return _getitem(self, name)
    ctypes.CDLL.__getitem__ = spy

    import numba

    def snapshot():
        return dict(os.environ), numba.get_num_threads(), "mallopt" in looked_up

    def changes(before):
        env, threads, mallopt = snapshot()
        return {"env": sorted(k for k in set(env) | set(before[0]) if env.get(k) != before[0].get(k)),
                "threads": [before[1], threads], "mallopt": mallopt and not before[2]}

    import minitinybert
    before = snapshot()
    names = sorted(m.name for m in pkgutil.iter_modules(minitinybert.__path__))
    for name in names:
        importlib.import_module("minitinybert." + name)
    result = {"modules": names, "imports": changes(before)}
    before = snapshot()
    from minitinybert.process import tune_process
    tune_process()              # the control: the explicit call changes what the checks look at
    result["tune_process"] = changes(before)
    print(json.dumps(result))
""")


def test_importing_the_package_changes_nothing_process_wide():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "MINITINYBERT_MALLOC")}
    env["OMP_NUM_THREADS"] = "1"          # what tune_process would give Numba: below its default
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"model", "kernels", "optim", "loss_kernels", "parallel", "runtime", "distill"} <= set(result["modules"])
    imports, control = result["imports"], result["tune_process"]
    assert imports["env"] == [], f"importing the package changed the environment: {imports['env']}"
    assert imports["threads"][0] == imports["threads"][1], f"importing changed Numba's threads: {imports['threads']}"
    assert not imports["mallopt"], "importing the package called mallopt"
    # the same checks see tune_process's changes, so they would see an import's
    assert control["env"] == ["OMP_WAIT_POLICY"]
    if control["threads"][0] > 1:
        assert control["threads"][1] == 1
    if platform.libc_ver()[0] == "glibc":
        assert control["mallopt"]


def test_the_readme_module_table_names_every_module_once():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What is inside"):]
    section = section[:section.index("\n## ", 1)]
    listed = [name for row in section.splitlines() if row.startswith("| `")
              for name in re.findall(r"`([a-z_]+\.py)`", row.split("|")[1])]
    files = sorted(p.name for p in (ROOT / "minitinybert").glob("*.py") if p.name != "__init__.py")
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({n for n in listed if listed.count(n) > 1})}"
    assert sorted(listed) == files, (f"in the package but not the table: {sorted(set(files) - set(listed))}; "
                                     f"in the table but not the package: {sorted(set(listed) - set(files))}")


def test_the_runtime_stays_a_file_to_read():
    """runtime.py is copied onto boards and read by the people who ship it: at most 1,100 lines."""
    lines = (PACKAGE / "runtime.py").read_text().count("\n")
    assert lines <= 1100, f"runtime.py has {lines} lines (limit 1,100)"
