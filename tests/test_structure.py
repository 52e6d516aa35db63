"""The package's structure, each check beside a control that shows it can fail:

- modules import each other without a cycle, and down the layers only: engine <- data <- training
  <- distill <- the top (export, infer); runtime.py, copied onto boards alone, imports nothing of
  the package;
- no private name (_x) of the package or the tools is used outside its module, and no tool or
  test edits sys.path (tools run as `python -m tools.<group>.<name>`);
- modules stay small enough to read; the run configuration has a field for every flag;
- importing any module changes nothing process-wide (the explicit engine.process.tune_process()
  does that, for the entry points);
- the README's layout table names every module once.

The import graph counts every import of a package module, wherever it is written: at module level
and inside functions. A cycle closed by an import inside a function is still a cycle; deferring an
import of a heavy optional library (tqdm, matplotlib, datasets) is fine and not part of this graph.
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
LAYERS = ("engine", "data", "training", "distill", "")   # "" = the package's top: export, infer
STANDALONE = {"runtime"}    # copied onto boards alone: imports nothing of the package


# --- the import graph ----------------------------------------------------------------------------------

def module_files(package_dir: Path) -> dict[str, Path]:
    """{"layer.module" (or "module" at the top): file} for every module of the package."""
    return {".".join(p.relative_to(package_dir).with_suffix("").parts): p
            for p in sorted(package_dir.rglob("*.py")) if p.stem not in ("__init__", "__main__")}


def package_imports(path: Path, package_dir: Path, modules: set[str]) -> set[str]:
    """The package modules that the file at `path` imports, anywhere in it (at module level and
    inside functions), as "layer.module" names."""
    package = package_dir.name
    here = list(path.relative_to(package_dir).parent.parts)        # the file's folder inside the package
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):                          # import pkg.layer.x [as y]
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    found.add(".".join(parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            if node.level == 0:                                   # from pkg[.layer.x] import y
                if not parts or parts[0] != package:
                    continue
                base = parts[1:]
            else:                                                 # from ..layer.x import y, from . import x
                if node.level - 1 > len(here):
                    continue                                      # above the package: not ours
                base = here[:len(here) - (node.level - 1)] + parts
            found.add(".".join(base))
            found.update(".".join(base + [alias.name]) for alias in node.names)   # names may be modules
    me = ".".join(path.relative_to(package_dir).with_suffix("").parts)
    return (found & modules) - {me}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    files = module_files(package_dir)
    return {name: package_imports(path, package_dir, set(files)) for name, path in files.items()}


def layer_of(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up the layers, and any import of the package from a standalone module."""
    bad = []
    for module, imports in sorted(graph.items()):
        for imported in sorted(imports):
            if module in STANDALONE:
                bad.append(f"{module} imports {imported}: it must stand alone")
            elif LAYERS.index(layer_of(imported)) > LAYERS.index(layer_of(module)):
                bad.append(f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported) or 'top'}), "
                           f"a layer above it")
    return bad


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



def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under root with the given {relative path: source} (folders get __init__.py)."""
    pkg = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).parent.joinpath("__init__.py").touch()
        (pkg / name).write_text(text)
    return pkg


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"engine.model", "engine.weights", "engine.params", "engine.kernels", "runtime", "distill.cli"} <= set(graph)
    assert "engine.params" in graph["engine.model"] and "engine.model" in graph["engine.weights"]   # edges seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = write_package(tmp_path, {
        "a.py": "from .b import thing\n",
        "b.py": "import os\n\ndef thing():\n    from pkg import c\n    return c\n",
        "c.py": "import pkg.a as a\nfrom . import b as unused  # noqa\n",
        "d.py": "from .. import elsewhere\nfrom .a import thing\n"})
    graph = import_graph(pkg)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a", "b"}, "d": {"a"}}
    assert find_cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "b"])
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_point_one_way_down_the_layers():
    graph = import_graph(PACKAGE)
    assert set(map(layer_of, graph)) == set(LAYERS), "a module outside the layers: add its folder to LAYERS"
    assert "data.tasks" in graph["data.batches"] and "engine.weights" in graph["distill.stages"]   # edges seen
    assert layering_violations(graph) == []


def test_an_import_up_the_layers_is_found(tmp_path):
    """The control: a planted upward import (data importing training), in each spelling and inside a
    function, and a standalone module importing the package, are all reported; downward ones are not."""
    pkg = write_package(tmp_path, {
        "engine/ops.py": "", "training/loop.py": "from ..engine import ops\n",
        "data/ok.py": "from ..engine.ops import x\nfrom . import bad\n",
        "data/bad.py": "def f():\n    from ..training.loop import train\n",
        "data/bad2.py": "import pkg.training.loop\n", "data/bad3.py": "from ..training import loop\n",
        "runtime.py": "from .engine import ops\n", "export.py": "from .training.loop import train\n"})
    graph = import_graph(pkg)
    assert graph["data.ok"] == {"engine.ops", "data.bad"} and graph["export"] == {"training.loop"}
    assert layering_violations(graph) == [
        "data.bad (data) imports training.loop (training), a layer above it",
        "data.bad2 (data) imports training.loop (training), a layer above it",
        "data.bad3 (data) imports training.loop (training), a layer above it",
        "runtime imports engine.ops: it must stand alone"]


# --- what tools and tests may touch ------------------------------------------------------------------

def private_uses(path: Path) -> list[str]:
    """Private names (_x, not __x__) of the package's or the tools' modules used outside them:
    `from minitinybert.x import _y` (or a relative import of one), or `x._y` on a name bound to a module."""
    tree = ast.parse(path.read_text(), str(path))
    ours = ("minitinybert", "tools")
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ours:
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] in ours):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def edits_sys_path(path: Path) -> list[str]:
    """Lines that change sys.path (insert, append, extend, assignment, +=)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("insert", "append", "extend"):
                target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if ast.unparse(t) == "sys.path"), None)
        if target is not None and ast.unparse(target) == "sys.path":
            found.append(node.lineno)
    return [f"{path.name}:{line}" for line in sorted(found)]


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py")) if p.name != "test_structure.py"]


def test_no_private_name_is_used_outside_its_module():
    files = python_files("minitinybert", "tests", "tools")
    assert len(files) > 80
    found = [use for path in files for use in private_uses(path)]
    assert found == [], "private names used outside their module: " + "; ".join(found)


def test_no_tool_or_test_edits_sys_path():
    found = [edit for path in python_files("tools", "tests") for edit in edits_sys_path(path)]
    assert found == [], f"sys.path edited (run tools as python -m tools.<group>.<name>): {found}"


def test_the_checks_see_private_names_and_sys_path_edits(tmp_path):
    """The control: each spelling of the two faults is reported, and their harmless look-alikes are not."""
    planted = tmp_path / "planted.py"
    planted.write_text("import sys\nimport minitinybert.engine.ops as ops\nfrom minitinybert.engine import kernels\n"
                       "from minitinybert.distill.cli import _int_list\nfrom tools.bench import runtime as r\n"
                       "sys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path += ['z']\n"
                       "sys.path = []\nops._GOLDEN\nkernels._exp32\nr._helper()\n"
                       "other = []\nother.append(1)\nops.__name__\nsys.argv.insert(0, 'a')\nself._x = 1\n")
    assert private_uses(planted) == ["planted.py:4 imports _int_list", "planted.py:10 uses ops._GOLDEN",
                                     "planted.py:11 uses kernels._exp32", "planted.py:12 uses r._helper"]
    assert edits_sys_path(planted) == ["planted.py:6", "planted.py:7", "planted.py:8", "planted.py:9"]


# --- size and configuration ------------------------------------------------------------------------

MODULE_LINES, RUNTIME_LINES = 600, 1100


def oversized_modules(package_dir: Path) -> list[str]:
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        limit = RUNTIME_LINES if path.relative_to(package_dir) == Path("runtime.py") else MODULE_LINES
        lines = path.read_text().count("\n")
        if lines > limit:
            found.append(f"{path.relative_to(package_dir)}: {lines} lines (limit {limit:,})")
    return found


def test_modules_stay_small_enough_to_read(tmp_path):
    """At most 600 lines a module; runtime.py, copied onto boards and read by the people who ship it, 1,100."""
    assert oversized_modules(PACKAGE) == []
    pkg = write_package(tmp_path, {"engine/big.py": "x = 1\n" * 601, "runtime.py": "x = 1\n" * 1100,
                                   "engine/runtime.py": "x = 1\n" * 700, "small.py": "x = 1\n" * 600})
    assert oversized_modules(pkg) == ["engine/big.py: 601 lines (limit 600)",       # the control
                                      "engine/runtime.py: 700 lines (limit 600)"]


def flag_mismatches(parser) -> list[str]:
    """Flags of any `distill` command without a RunConfig field (or the reverse), and flags whose
    default differs from the field's."""
    from minitinybert.distill import RunConfig
    flags = {}
    for command in parser._subparsers._group_actions[0].choices.values():
        flags.update({a.dest: a.default for a in command._actions if a.dest != "help"})
    defaults = {name: getattr(RunConfig(), name) for name in RunConfig.__dataclass_fields__ if name != "command"}
    return sorted(set(flags) ^ set(defaults)) + sorted(k for k in flags if k in defaults and flags[k] != defaults[k])


def test_the_run_configuration_has_a_field_for_every_flag_with_its_default():
    """The stages read RunConfig only: every option is a field of it, with the parser's default (a default
    changed in one place and not the other would make a run differ by how it was started)."""
    from minitinybert.distill import build_parser, parse_config
    assert flag_mismatches(build_parser()) == []
    config = parse_config(["task", "--task", "rte", "--mapping", "2,4", "--general-steps", "7"])
    assert (config.command, config.task, config.mapping, config.general_steps, config.out) == \
        ("task", "rte", (2, 4), 7, str(Path("runs") / "rte"))
    assert parse_config(["embed", "--embed-steps", "5"]).embed_steps == 5
    parser = build_parser()                                           # the control: one of each fault
    commands = parser._subparsers._group_actions[0].choices
    commands["embed"].add_argument("--planted", default=3)
    next(a for a in commands["all"]._actions if a.dest == "seed").default = 9
    assert flag_mismatches(parser) == ["planted", "seed"]


def test_the_readme_layout_table_names_every_module_once():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("\n## ", 1)]
    listed = [name for row in section.splitlines() if row.startswith("| `")
              for name in re.findall(r"`([a-z_/]+\.py)`", row.split("|")[1])]
    files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name not in ("__init__.py", "__main__.py"))
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({n for n in listed if listed.count(n) > 1})}"
    assert sorted(listed) == files, (f"in the package but not the table: {sorted(set(files) - set(listed))}; "
                                     f"in the table but not the package: {sorted(set(listed) - set(files))}")


# --- importing changes nothing process-wide -------------------------------------------------------------

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
    names = sorted(m.name for m in pkgutil.walk_packages(minitinybert.__path__, "minitinybert.")
                   if not m.name.endswith("__main__"))       # __main__ runs the command: not an import
    for name in names:
        importlib.import_module(name)
    result = {"modules": names, "imports": changes(before)}
    before = snapshot()
    from minitinybert.engine.process import tune_process
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
    assert {"minitinybert." + m for m in ("engine.model", "engine.kernels", "engine.optim", "engine.loss_kernels",
                                          "training.parallel", "runtime", "distill.cli")} <= set(result["modules"])
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
