"""The package's import and size rules, checked on the source (AST, nothing imported):

- no module imports or reads a private name (``_x``) of another module, dosepred's or a library's:
  ``from m import _x``, ``m._x``, ``m.sub._x``, ``getattr(m, "_x")`` (setattr, hasattr, delattr).
  A private *module* (``dosepred/_lazy.py``) is private to its package: modules inside that
  package may import it. Deliberate uses of a library's private API are listed, with their reason,
  in :data:`ALLOWED_PRIVATE`;
- nothing imports upward: every module of ``src/dosepred`` sits in a layer of :data:`LAYERS` and
  imports only modules of its own layer or below (imports under ``if TYPE_CHECKING:`` excepted);
  an import of a dosepred module that no layer holds, or that does not exist, fails too. So no
  stage imports the CLI, predict never imports training, scoring never reads files through
  predict. docs/architecture.md states the same rules in words;
- no import cycle among the package's modules (counting the imports the layer rule counts, so an
  import inside a function closes a cycle too; ``if TYPE_CHECKING:`` imports excepted); each cycle is
  reported with its path of imports. Cycles that exist for now are listed, with their reason, in
  :data:`CYCLES_FOR_NOW`;
- (issue 28) no import of one of the package's modules inside a function unless that module imports
  a heavy library (:data:`HEAVY`) at its top, directly or through the package's modules it imports
  there (:func:`heavy_modules`), or the import line says why (:data:`WHY_LOCAL`: ``# cycle: ...``,
  ``# startup: ...`` in the command line; a stated reason is checked too);
- no module longer than :data:`MAX_LINES` physical lines (a room a reader holds in their head);
  those still longer are listed, with their reason, in :data:`TOO_LONG_FOR_NOW`.
  Both lists fail when an entry is no longer needed, so they only shrink.

An import is an import statement, a call of ``importlib.import_module`` / ``__import__`` with a
literal name, or a lazily resolved name of one of the package's packages (``from dosepred import
train``, ``dosepred.train``, ``from dosepred.qa import run_qa``: an import of the module that the
package ``__init__.py``'s lazy table maps it to).

Each rule is also run on a small package written here, so the checks themselves are tested to
fail on the imports they forbid.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

#: module (or package prefix) -> layer; the longest matching prefix counts. A new module must be
#: placed here (the test says so): that is where its allowed imports are decided.
LAYERS: dict[str, int] = {
    # 0: the record and small utilities
    "dosepred": 0,  # the package itself: Patient, RoiSet and lazily resolved names only
    "dosepred.patient": 0, "dosepred.geometry": 0, "dosepred.roi": 0, "dosepred.resample": 0,
    "dosepred.fsutil": 0, "dosepred.constants": 0, "dosepred.boxes": 0, "dosepred.progress": 0,
    "dosepred._lazy": 0, "dosepred.errors": 0,
    # 1: readers and writers, synthetic data, metric definitions and exact DVH values, protocols
    "dosepred.io": 1, "dosepred.synth": 1, "dosepred.baseline": 1, "dosepred.metrics": 1,
    "dosepred.dvh": 1, "dosepred.protocol": 1,
    # how a dose is predicted (InferenceOptions) and what a prediction cache records of it (no torch)
    "dosepred.inference": 1,
    # plan QA's maths and records: metric families, split-conformal intervals, the choice of method, the
    # DVH band, calibration.json (typed, versioned), the verdicts (numpy and metric definitions only)
    "dosepred.qa.families": 1, "dosepred.qa.conformal": 1, "dosepred.qa.crossval": 1, "dosepred.qa.band": 1,
    "dosepred.qa.calibration": 1, "dosepred.qa.result": 1, "dosepred.qa.dose_gap": 1,
    # 2: losses, networks, splits, evaluation (scoring on Patients; pairing of sources through io)
    "dosepred.losses": 2, "dosepred.models": 2, "dosepred.split": 2, "dosepred.evaluation": 2,
    # 3: prediction with a model
    "dosepred.predict": 3,
    # 4: training (validates with predict and scoring), calibrating (predicts and scores patients)
    "dosepred.training": 4, "dosepred.qa.calibrating": 4,
    # 5: reports, the plan QA checker and its report (the package dosepred.qa exports them)
    "dosepred.report": 5, "dosepred.qa": 5, "dosepred.qa.check": 5, "dosepred.qa.report": 5,
    # 6: the commands as API functions and their console rendering, benchmarks, the demo
    "dosepred.workflows": 6, "dosepred.console": 6, "dosepred.bench": 6, "dosepred.demo": 6,
    # 7: the command line, imported by nothing else
    "dosepred.cli": 7, "dosepred.__main__": 7,
}


#: (file under src/, the private name used) -> why: deliberate uses of a library's private API. Each is
#: a known risk on that library's upgrades; add one only with its reason.
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    ("dosepred/cli/common.py", "typer.core.TyperArgument._usage_display_name"):
        "typer writes {src} in usage lines; patched only where typer has the attribute",
}


#: The import cycles that exist for now (the sorted modules of each, as :func:`cycle_problems` reports
#: them) -> why and what removes it. The test fails on any other cycle and on an entry that is no
#: longer a cycle of exactly these modules (update or remove it then).
CYCLES_FOR_NOW: dict[tuple[str, ...], str] = {
}

#: The most physical lines a module of the package may have.
MAX_LINES = 800

#: Modules longer than :data:`MAX_LINES` for now -> why. The test fails on any other long module and
#: on an entry that is no longer longer than that (remove it then).
TOO_LONG_FOR_NOW: dict[str, str] = {}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    what: str
    name: str = ""  # the private name used, dotted (module.attribute)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _private_module_allowed(target: str, importer: str) -> bool:
    """Whether ``importer`` may name module ``target``: every private part of ``target`` must belong
    to a package that holds ``importer``."""
    parts = target.split(".")
    for i, p in enumerate(parts):
        if _is_private(p):
            owner = ".".join(parts[:i])
            if not (importer == owner or importer.startswith(owner + ".")):
                return False
    return True


@dataclass(frozen=True)
class _Import:
    node: ast.stmt | ast.expr
    module: str  # the module imported from (or imported)
    local: str  # the name bound in the importing module ("" for none)
    stands_for: str  # what that name is: a module, or module.attribute
    attr: str | None  # ``from module import attr`` where attr is no submodule
    type_only: bool  # under ``if TYPE_CHECKING:``


def _defines_getattr(tree: ast.Module) -> bool:
    """Whether a module defines ``__getattr__`` (PEP 562): ``def __getattr__`` or an assignment to
    it (``__getattr__, __dir__ = lazy_attributes(...)``)."""
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and n.name == "__getattr__":
            return True
        targets = (n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign)
                   else [])
        for t in targets:
            names = t.elts if isinstance(t, ast.Tuple) else [t]
            if any(isinstance(e, ast.Name) and e.id == "__getattr__" for e in names):
                return True
    return False


def _lazy_tables(root: Path, package: str) -> dict[str, dict[str, str]]:
    """Every package's lazily resolved names: package -> {name -> absolute module}, from the dict
    literals of ``name: ".module"`` in its ``__init__.py`` (which its ``__getattr__`` imports on
    first use); packages without a ``__getattr__`` have none."""
    out: dict[str, dict[str, str]] = {}
    for mod, init in _modules(root, package).items():
        if init.name != "__init__.py":
            continue
        tree = ast.parse(init.read_text(), str(init))
        if not _defines_getattr(tree):
            continue
        table: dict[str, str] = {}
        for n in tree.body:
            value = n.value if isinstance(n, (ast.Assign, ast.AnnAssign)) else None
            if not isinstance(value, ast.Dict) or not value.keys:
                continue
            pairs = [(k.value, v.value) for k, v in zip(value.keys, value.values, strict=True)
                     if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)]
            if len(pairs) == len(value.keys) and all(
                    isinstance(k, str) and isinstance(v, str) and v.startswith(".") for k, v in pairs):
                for k, v in pairs:
                    table[k] = _resolve(mod, True, len(v) - len(v.lstrip(".")), v.lstrip(".") or None)
        if table:
            out[mod] = table
    return out


_IMPORT_CALLS = {"import_module", "__import__"}


def _dynamic_import(node: ast.AST, module: str, is_package: bool) -> str | None:
    """The module a call ``importlib.import_module("literal"[, package])`` or
    ``__import__("literal")`` imports (a relative literal resolved against a literal package,
    ``__package__`` or ``__name__``); None for any other expression."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    first = node.args[0]
    if name not in _IMPORT_CALLS or not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    target = first.value
    if name == "__import__" or not target.startswith("."):
        return target
    anchor = node.args[1] if len(node.args) > 1 else next(
        (k.value for k in node.keywords if k.arg == "package"), None)
    if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
        base, base_is_pkg = anchor.value, True
    elif isinstance(anchor, ast.Name) and anchor.id in ("__package__", "__name__"):
        base, base_is_pkg = module, is_package or anchor.id == "__name__"
    else:
        return None
    level = len(target) - len(target.lstrip("."))
    return _resolve(base, base_is_pkg, level, target.lstrip(".") or None)


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str],
             lazy: dict[str, dict[str, str]] | None = None) -> list[_Import]:
    """Every import of a module, function-level ones included: import statements, calls of
    ``importlib.import_module`` / ``__import__`` with a literal name, and ``from package import
    name`` of a name in a package's lazy table (an import of the module that defines it)."""
    out: list[_Import] = []
    lazy = lazy or {}
    assigned: dict[int, str] = {}  # id of an import call -> the name its result is assigned to

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If):
            t = node.test
            guard = (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")
            for c in node.body:
                visit(c, type_only or guard)
            for c in node.orelse:
                visit(c, type_only)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                local = a.asname or a.name.split(".")[0]
                out.append(_Import(node, a.name, local, a.name if a.asname else local, None, type_only))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                local = a.asname or a.name
                if sub in known:  # ``from package import submodule``
                    out.append(_Import(node, sub, local, sub, None, type_only))
                elif a.name in lazy.get(base, {}):  # resolved by the package's __getattr__
                    target = lazy[base][a.name]
                    out.append(_Import(node, target, local, f"{target}.{a.name}", a.name, type_only))
                else:
                    out.append(_Import(node, base, local, sub, a.name, type_only))
        elif isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
            assigned[id(node.value)] = node.targets[0].id  # type: ignore[attr-defined]
        elif isinstance(node, ast.Call):
            target = _dynamic_import(node, module, is_package)
            if target is not None:
                local = assigned.get(id(node), "")
                top = isinstance(node.func, ast.Name) and node.func.id == "__import__"
                out.append(_Import(node, target, local, target.split(".")[0] if top else target, None,
                                   type_only))
        for c in ast.iter_child_nodes(node):
            visit(c, type_only)

    visit(tree, False)
    return out


_ATTR_CALLS = {"getattr", "setattr", "hasattr", "delattr"}


def private_accesses(root: Path, package: str = "dosepred") -> list[Finding]:
    """Every import, read or write of another module's private name under ``root/package``:
    ``m._x``, ``getattr(m, "_x")`` (and setattr, hasattr, delattr), imports of it by statement or
    by ``importlib.import_module`` with a literal name."""
    mods = _modules(root, package)
    known = set(mods)
    lazy = _lazy_tables(root, package)
    out: set[Finding] = set()
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(root))
        is_package = path.name == "__init__.py"
        bound: dict[str, str] = {}  # local name -> the module (or module.attribute) it stands for
        for imp in _imports(tree, mod, is_package, known, lazy):
            if not _private_module_allowed(imp.module, mod):
                out.add(Finding(rel, imp.node.lineno, f"imports the private module {imp.module}", imp.module))
            if imp.attr is not None and _is_private(imp.attr):
                out.add(Finding(rel, imp.node.lineno, f"imports the private name {imp.attr} of {imp.module}",
                                imp.stands_for))
            if imp.local:
                bound[imp.local] = imp.stands_for

        def dotted(n: ast.AST, bound: dict[str, str] = bound, mod: str = mod, is_package: bool = is_package
                   ) -> str | None:
            """What an expression names when it starts at an imported name (else None)."""
            if isinstance(n, ast.Name):
                return bound.get(n.id)
            if isinstance(n, ast.Attribute):
                base = dotted(n.value)
                return None if base is None else f"{base}.{n.attr}"
            target = _dynamic_import(n, mod, is_package)
            if target is not None:
                top = isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "__import__"
                return target.split(".")[0] if top else target
            return None

        def check(node: ast.AST, base_node: ast.AST, name: str, mod: str = mod, rel: str = rel,
                  dotted=dotted) -> None:
            base = dotted(base_node)
            full = f"{base}.{name}"
            if base is not None and not (full in known and _private_module_allowed(full, mod)):
                out.add(Finding(rel, node.lineno, f"uses the private name {name} of {base}", full))

        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                check(node, node.value, node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in _ATTR_CALLS and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                  and _is_private(node.args[1].value)):
                check(node, node.args[0], node.args[1].value)
    return sorted(out, key=lambda f: (f.file, f.line, f.what))


def _layer(module: str, layers: dict[str, int], package: str) -> int | None:
    """The layer of the longest prefix of ``module`` in ``layers`` (the package itself only as an
    exact match, so that no new module is placed by default)."""
    best = None
    for prefix in layers:
        hit = module == prefix or (prefix != package and module.startswith(prefix + "."))
        if hit and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else layers[best]


def upward_imports(root: Path, layers: dict[str, int], package: str = "dosepred") -> list[Finding]:
    """Imports of a module of a higher layer or of no layer (``if TYPE_CHECKING:`` blocks excepted),
    and modules that no layer holds. Imports are statements, ``importlib.import_module`` calls with
    a literal name, and lazily resolved names of the package (``from package import name`` and
    ``package.name`` where the package's ``__init__`` maps ``name`` to a module: an import of it)."""
    mods = _modules(root, package)
    known = set(mods)
    lazy = _lazy_tables(root, package)
    out: list[Finding] = []
    for mod, path in mods.items():
        rel = str(path.relative_to(root))
        own = _layer(mod, layers, package)
        if own is None:
            out.append(Finding(rel, 1, f"module {mod} is in no layer: add it to LAYERS"))
            continue
        for line, target in _uses(path, mod, known, lazy, package):
            if not (target == package or target.startswith(package + ".")):
                continue
            theirs = _layer(target, layers, package)
            if theirs is None:
                out.append(Finding(rel, line, f"{mod} imports {target}, which is in no layer"))
            elif target not in known:  # a relative import one dot short after a module moved
                out.append(Finding(rel, line, f"{mod} imports {target}, which does not exist"))
            elif theirs > own:
                out.append(Finding(rel, line, f"{mod} (layer {own}) imports {target} (layer {theirs})"))
    return out


def _uses(path: Path, mod: str, known: set[str], lazy: dict[str, dict[str, str]], package: str
          ) -> list[tuple[int, str]]:
    """(line, module) of every import of module ``mod`` (file ``path``) that the rules count: import
    statements and literal ``importlib`` calls anywhere in the file, and lazily resolved names of the
    package's packages (``from pk.sub import name``, ``sub.name``); not those under ``if
    TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    imports = _imports(tree, mod, path.name == "__init__.py", known, lazy)
    uses = [(imp.node.lineno, imp.module) for imp in imports if not imp.type_only]
    packages = {imp.local: lazy[imp.stands_for] for imp in imports
                if imp.stands_for in lazy and imp.local and not imp.type_only}
    uses += [(n.lineno, packages[n.value.id][n.attr]) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.attr in packages.get(n.value.id, {})]
    return uses


def import_graph(root: Path, package: str = "dosepred") -> dict[str, dict[str, tuple[str, int]]]:
    """module -> {module it imports -> (file, line) of its first such import}, between the modules of
    ``root/package``, counting the imports :func:`upward_imports` counts (a module importing itself
    is no edge)."""
    mods = _modules(root, package)
    known = set(mods)
    lazy = _lazy_tables(root, package)
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for mod, path in mods.items():
        edges = graph.setdefault(mod, {})
        for line, target in sorted(_uses(path, mod, known, lazy, package)):
            if target in known and target != mod:
                edges.setdefault(target, (Path(path.relative_to(root)).as_posix(), line))
    return graph


def _knots(graph: dict[str, dict[str, tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _shortest_cycle(graph: dict[str, dict[str, tuple[str, int]]], start: str, within: set[str]) -> list[str]:
    """The modules of a shortest cycle from ``start`` back to it inside ``within`` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in within and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"{start} is in no cycle")  # a knot's module always is


def import_cycles(root: Path, package: str = "dosepred") -> dict[tuple[str, ...], str]:
    """Every import cycle among the modules of ``root/package``: the sorted modules tied in one knot
    (a strongly connected component) -> a description with a shortest cycle through the first of
    them, each import named by file and line, and the knot's other modules."""
    graph = import_graph(root, package)
    out = {}
    for knot in _knots(graph):
        cycle = _shortest_cycle(graph, knot[0], set(knot))
        hops = " -> ".join([cycle[0]] + [f"{b} ({graph[a][b][0]}:{graph[a][b][1]})"
                                         for a, b in zip(cycle, cycle[1:], strict=False)])
        rest = [m for m in knot if m not in cycle]
        out[tuple(knot)] = hops + (f"; also in this knot: {', '.join(rest)}" if rest else "")
    return out


def cycle_problems(root: Path, allowed: dict[tuple[str, ...], str], package: str = "dosepred") -> list[str]:
    """The import cycles not in ``allowed``, and the entries of ``allowed`` that are no cycle (any
    more, or no longer of exactly those modules)."""
    found = import_cycles(root, package)
    out = [f"import cycle: {path}" for knot, path in found.items() if knot not in allowed]
    out += [f"{knot} is listed as a cycle for now but is none: remove (or update) it" for knot in allowed
            if knot not in found]
    return out


def module_lengths(root: Path, package: str = "dosepred") -> dict[str, int]:
    """module -> its physical lines (newline-separated, as ``wc -l`` counts a file that ends in one)."""
    return {m: len(p.read_bytes().splitlines()) for m, p in _modules(root, package).items()}


def length_problems(root: Path, allowed: dict[str, str], package: str = "dosepred",
                    limit: int = MAX_LINES) -> list[str]:
    """Modules over ``limit`` lines that ``allowed`` does not list, and listed ones that are not (or
    no longer exist)."""
    lengths = module_lengths(root, package)
    out = [f"{m}: {n} lines, over {limit}: split it into rooms a reader can hold in their head"
           for m, n in lengths.items() if n > limit and m not in allowed]
    out += [f"{m} is listed as too long for now but has {lengths[m]} lines (limit {limit}): remove it "
            "from the list" if m in lengths else f"{m} is listed as too long for now but no longer exists: "
            "remove it from the list" for m in allowed if lengths.get(m, 0) <= limit]
    return out


#: The libraries the package imports inside functions, except in the modules whose work they are
#: (so that ``dosepred --help`` and the commands that need no model do not load them).
HEAVY = frozenset({"torch", "monai", "matplotlib", "pydicom", "nibabel", "SimpleITK", "itk", "scipy"})

#: The trailing comment that says why an import of one of the package's modules stays inside a
#: function: ``# heavy: torch`` (the module imported imports a heavy library; needed only where
#: that is not seen at its top), ``# cycle: a -> b -> a`` (a cycle of CYCLES_FOR_NOW would close at
#: import time), ``# startup: ...`` (the command line loads its commands when it runs, so that
#: ``main()`` catches a Ctrl-C while they load; only in the package's ``cli``).
WHY_LOCAL = re.compile(r"#\s*(heavy|cycle|startup):")


def _function_level(tree: ast.AST) -> set[int]:
    """The ids of the nodes that run only when a function of ``tree`` is called (its body)."""
    out: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.update(id(c) for stmt in n.body for c in ast.walk(stmt))
        elif isinstance(n, ast.Lambda):
            out.update(id(c) for c in ast.walk(n.body))
    return out


def _packages_of(module: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: what importing the module runs, in order."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def heavy_modules(root: Path, package: str = "dosepred") -> dict[str, set[str]]:
    """module -> the heavy libraries (:data:`HEAVY`) that importing it imports: those it imports at
    module level (not inside a function, not under ``if TYPE_CHECKING:``) and, transitively, those of
    the package's modules it imports so, its own packages included (importing ``a.b.c`` runs ``a``
    and ``a.b`` first)."""
    mods = _modules(root, package)
    known = set(mods)
    lazy = _lazy_tables(root, package)
    heavy: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        inside = _function_level(tree)
        top = [imp for imp in _imports(tree, mod, path.name == "__init__.py", known, lazy)
               if not imp.type_only and id(imp.node) not in inside]
        heavy[mod] = {imp.module.split(".")[0] for imp in top} & HEAVY
        deps[mod] = {p for m in [mod, *(imp.module for imp in top)] for p in _packages_of(m)
                     if p in known and p != mod}
    changed = True
    while changed:  # the closure over module-level imports (a fixed point: cycles end too)
        changed = False
        for mod in mods:
            more = set().union(*(heavy[d] for d in deps[mod])) - heavy[mod]
            if more:
                heavy[mod] |= more
                changed = True
    return heavy


def local_imports(root: Path, package: str = "dosepred") -> list[Finding]:
    """Import statements inside functions of the package's own modules that have no reason to be
    there: the module imported (or a package above it) imports no heavy library (:func:`heavy_modules`)
    and the import line (the first line of a multi-line import) says no reason (:data:`WHY_LOCAL`).
    A stated reason must hold: ``# heavy:`` only on an import of a heavy module, ``# cycle:`` only on
    one that closes an import cycle (the importer and the module imported in one knot),
    ``# startup:`` only in the command line (``package.cli`` and its modules)."""
    mods = _modules(root, package)
    known = set(mods)
    lazy = _lazy_tables(root, package)
    heavy = heavy_modules(root, package)
    knot_of = {m: set(k) for k in _knots(import_graph(root, package)) for m in k}
    cli = f"{package}.cli"
    out: list[Finding] = []
    for mod, path in mods.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        inside = _function_level(tree)
        rel = str(path.relative_to(root))
        statements: dict[int, tuple[ast.stmt | ast.expr, list[str]]] = {}
        for imp in _imports(tree, mod, path.name == "__init__.py", known, lazy):
            own = imp.module == package or imp.module.startswith(package + ".")
            if (own and isinstance(imp.node, (ast.Import, ast.ImportFrom)) and id(imp.node) in inside
                    and not imp.type_only):
                statements.setdefault(id(imp.node), (imp.node, []))[1].append(imp.module)
        for node, targets in statements.values():
            libs = set().union(*(heavy.get(p, set()) for t in targets for p in _packages_of(t)))
            said = WHY_LOCAL.search(lines[node.lineno - 1])
            why = said.group(1) if said else None
            names = ", ".join(sorted(set(targets)))
            if why is None and not libs:
                out.append(Finding(rel, node.lineno, f"{mod} imports {names} inside a function, and it "
                                   "imports no heavy library: import it at the top (or say why not: "
                                   "# heavy: / # cycle: / # startup:)"))
            elif why == "heavy" and not libs:
                out.append(Finding(rel, node.lineno, f"{mod} says '# heavy:' of {names}, which imports no "
                                   f"heavy library ({', '.join(sorted(HEAVY))})"))
            elif why == "cycle" and not set(targets) & knot_of.get(mod, set()):
                out.append(Finding(rel, node.lineno, f"{mod} says '# cycle:' of {names}, which closes no "
                                   "import cycle"))
            elif why == "startup" and not (mod == cli or mod.startswith(cli + ".")):
                out.append(Finding(rel, node.lineno, f"{mod} says '# startup:' of {names}, which only the "
                                   f"command line ({cli}) may say"))
    return sorted(out, key=lambda f: (f.file, f.line))


# ----------------------------------------------------------------------------------- the source

def test_no_module_uses_a_private_name_of_another():
    found = [f for f in private_accesses(SRC) if (Path(f.file).as_posix(), f.name) not in ALLOWED_PRIVATE]
    assert not found, "private names used across modules:\n" + "\n".join(map(str, found))


def test_allowed_private_uses_still_exist():
    """An exception that is no longer needed is removed from ALLOWED_PRIVATE."""
    used = {(Path(f.file).as_posix(), f.name) for f in private_accesses(SRC)}
    assert set(ALLOWED_PRIVATE) <= used, set(ALLOWED_PRIVATE) - used


def test_nothing_imports_upward():
    found = upward_imports(SRC, LAYERS)
    assert not found, "imports against the layers:\n" + "\n".join(map(str, found))


def test_no_import_cycle():
    found = cycle_problems(SRC, CYCLES_FOR_NOW)
    assert not found, "import cycles among dosepred's modules:\n" + "\n".join(found)


def test_no_module_is_too_long():
    found = length_problems(SRC, TOO_LONG_FOR_NOW)
    assert not found, "modules and their length:\n" + "\n".join(found)


def test_imports_inside_functions_say_why():
    """(issue 28) the package's own modules are imported at the top, unless importing one imports a
    heavy library or would close a cycle: then the import line says so."""
    found = local_imports(SRC)
    assert not found, "imports inside functions without a reason:\n" + "\n".join(map(str, found))


def test_the_heavy_modules_are_those_whose_work_is_torch():
    """(the static closure of :func:`heavy_modules` agrees with what the docs say imports torch)"""
    heavy = {m for m, libs in heavy_modules(SRC).items() if libs}
    assert {"dosepred.models.unet", "dosepred.losses", "dosepred.predict",
            "dosepred.training.trainer"} <= heavy
    light = {"dosepred", "dosepred.cli", "dosepred.cli.model", "dosepred.training",
             "dosepred.training.config", "dosepred.workflows", "dosepred.io.dicom", "dosepred.report.plots",
             "dosepred.evaluation"}
    assert not light & heavy, light & heavy


def test_the_named_rules_follow_from_the_layers():
    """The rules issue #17 names, as layer facts: the CLI is on top alone, predict is below
    training, evaluation below predict (so training may validate with it)."""
    top = max(LAYERS.values())
    assert {m for m, k in LAYERS.items() if k == top} == {"dosepred.cli", "dosepred.__main__"}
    assert LAYERS["dosepred.predict"] < LAYERS["dosepred.training"]
    assert LAYERS["dosepred.evaluation"] < LAYERS["dosepred.predict"]
    assert LAYERS["dosepred.io"] < LAYERS["dosepred.evaluation"]


# ---------------------------------------------------------------- the checks on a made-up package

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return _write(tmp_path, {
        "pk/__init__.py": "",
        "pk/_util.py": "def helper():\n    return 1\n",
        "pk/base.py": "_SECRET = 1\nPUBLIC = 2\n\nclass Thing:\n    _hidden = 3\n\n\n"
                      "def peek(t):\n    return getattr(t, '_hidden', None)\n",  # not a module: allowed
        "pk/io/__init__.py": "",
        "pk/io/reader.py": "from .. import _util\nfrom ..base import PUBLIC\n\n\ndef read():\n"
                           "    return PUBLIC + _util.helper()\n",
        "pk/top.py": "from . import base\n\n\ndef f():\n    from .io import reader\n"
                     "    return reader.read() + base.PUBLIC\n",
    })


PKG_LAYERS = {"pk": 0, "pk._util": 0, "pk.base": 0, "pk.io": 1, "pk.top": 2}


def test_checks_pass_a_clean_package(pkg):
    assert private_accesses(pkg, "pk") == []
    assert upward_imports(pkg, PKG_LAYERS, "pk") == []


@pytest.mark.parametrize("code, what", [
    ("from .base import _SECRET\n", "imports the private name _SECRET of pk.base"),
    ("from . import base\nx = base._SECRET\n", "uses the private name _SECRET of pk.base"),
    ("import pk.base\nx = pk.base._SECRET\n", "uses the private name _SECRET of pk.base"),
    ("from .base import Thing\nx = Thing._hidden\n", "uses the private name _hidden of pk.base.Thing"),
    ("from .io import reader\nx = reader._cache\n", "uses the private name _cache of pk.io.reader"),
])
def test_private_access_is_found(pkg, code, what):
    _write(pkg, {"pk/top.py": code})
    found = private_accesses(pkg, "pk")
    assert [f.what for f in found] == [what], found
    assert found[0].file == str(Path("pk/top.py"))


def test_private_module_is_private_to_its_package(pkg):
    _write(pkg, {"pk/io/_fmt.py": "X = 1\n", "pk/io/reader.py": "from ._fmt import X\n",
                 "pk/top.py": "def f():\n    from .io._fmt import X\n    return X\n"})
    assert upward_imports(pkg, PKG_LAYERS, "pk") == []
    found = private_accesses(pkg, "pk")
    assert [(f.file, f.what) for f in found] == [
        (str(Path("pk/top.py")), "imports the private module pk.io._fmt")]


def test_upward_import_is_found_also_inside_functions(pkg):
    _write(pkg, {"pk/base.py": "def g():\n    from .io import reader\n    return reader\n"})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [f.what for f in found] == ["pk.base (layer 0) imports pk.io.reader (layer 1)"]
    assert found[0].line == 2


def test_type_checking_imports_and_unplaced_modules(pkg):
    guarded = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .top import f\n"
    _write(pkg, {"pk/base.py": guarded, "pk/extra.py": "X = 1\n"})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [f.what for f in found] == ["module pk.extra is in no layer: add it to LAYERS"]


def test_import_of_a_module_in_no_layer_is_found(pkg):
    """(an import of a package module that LAYERS does not place fails, it does not pass silently)"""
    _write(pkg, {"pk/extra.py": "X = 1\n", "pk/top.py": "from .extra import X\nfrom .ghost import Y\n"})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert sorted(f.what for f in found) == ["module pk.extra is in no layer: add it to LAYERS",
                                             "pk.top imports pk.extra, which is in no layer",
                                             "pk.top imports pk.ghost, which is in no layer"]


def test_import_of_a_module_that_does_not_exist_is_found(pkg):
    """(``from ..resample import`` written in a module moved one package deeper names pk.io.resample)"""
    _write(pkg, {"pk/io/reader.py": "def g():\n    from .base import PUBLIC\n    return PUBLIC\n"})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [(f.what, f.line) for f in found] == [("pk.io.reader imports pk.io.base, which does not exist", 2)]


@pytest.mark.parametrize("code", [
    "import importlib\n\n\ndef g():\n    return importlib.import_module('pk.top')\n",
    "from importlib import import_module\nm = import_module('.top', __package__)\n",
    "import importlib\nm = importlib.import_module('.top', package='pk')\n",
    "m = __import__('pk.top')\n",
])
def test_import_module_with_a_literal_is_an_import(pkg, code):
    _write(pkg, {"pk/base.py": code})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [f.what for f in found] == ["pk.base (layer 0) imports pk.top (layer 2)"], found


@pytest.mark.parametrize("code, what", [
    ("import importlib\nm = importlib.import_module('pk.io._fmt')\n",
     "imports the private module pk.io._fmt"),
    ("import importlib\nm = importlib.import_module('pk.base')\nx = m._SECRET\n",
     "uses the private name _SECRET of pk.base"),
    ("import importlib\nx = importlib.import_module('.base', 'pk')._SECRET\n",
     "uses the private name _SECRET of pk.base"),
    ("from . import base\nx = getattr(base, '_SECRET')\n", "uses the private name _SECRET of pk.base"),
    ("from . import base\nx = getattr(base, '_SECRET', None)\n", "uses the private name _SECRET of pk.base"),
    ("import pk.base\nsetattr(pk.base, '_SECRET', 2)\n", "uses the private name _SECRET of pk.base"),
    ("from .base import Thing\nok = hasattr(Thing, '_hidden')\n",
     "uses the private name _hidden of pk.base.Thing"),
    ("from .io import reader\ndelattr(reader, '_cache')\n", "uses the private name _cache of pk.io.reader"),
])
def test_dynamic_private_access_is_found(pkg, code, what):
    _write(pkg, {"pk/io/_fmt.py": "X = 1\n", "pk/top.py": code})
    found = private_accesses(pkg, "pk")
    assert [f.what for f in found] == [what], found


_LAZY_INIT = ("import importlib\n\n_LAZY = {'read': '.io.reader', 'f': '.top'}\n\n\n"
              "def __getattr__(name):\n"
              "    return getattr(importlib.import_module(_LAZY[name], __name__), name)\n")


@pytest.mark.parametrize("where, code, what", [
    ("pk/io/reader.py", "from .. import f\n", "pk.io.reader (layer 1) imports pk.top (layer 2)"),
    ("pk/io/reader.py", "def g():\n    from pk import f\n    return f\n",
     "pk.io.reader (layer 1) imports pk.top (layer 2)"),
    ("pk/base.py", "import pk\n\n\ndef g():\n    return pk.read()\n",
     "pk.base (layer 0) imports pk.io.reader (layer 1)"),
    ("pk/base.py", "import pk as p\nx = p.f\n", "pk.base (layer 0) imports pk.top (layer 2)"),
])
def test_lazily_resolved_names_import_their_module(pkg, where, code, what):
    _write(pkg, {"pk/__init__.py": _LAZY_INIT, where: code})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [f.what for f in found] == [what], found


@pytest.mark.parametrize("code, also", [
    ("def g():\n    from .io import f\n    return f\n", []),
    ("from . import io\n\n\ndef g():\n    return io.f\n", ["pk.base (layer 0) imports pk.io (layer 1)"]),
])
def test_a_subpackage_table_assigned_to_getattr_counts(pkg, code, also):
    """(a lazy table in any package, its ``__getattr__`` assigned as ``dosepred._lazy`` makes it)"""
    init = ("from .._util import helper as lazy_attributes\n\n_LAZY = {'f': '..top'}\n"
            "__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())\n")
    _write(pkg, {"pk/io/__init__.py": init, "pk/base.py": code})
    found = upward_imports(pkg, PKG_LAYERS, "pk")
    assert [f.what for f in found] == [*also, "pk.base (layer 0) imports pk.top (layer 2)"], found


def test_lazily_resolved_names_from_below_pass(pkg):
    _write(pkg, {"pk/__init__.py": _LAZY_INIT, "pk/top.py": "from pk import read\nfrom . import f\n"})
    assert upward_imports(pkg, PKG_LAYERS, "pk") == []
    assert private_accesses(pkg, "pk") == []


# ------------------------------------------------------------- imports inside functions, made up

@pytest.mark.parametrize("files, what", [
    ({}, "pk.top imports pk.io.reader inside a function, and it imports no heavy library: import it at "
         "the top (or say why not: # heavy: / # cycle: / # startup:)"),
    ({"pk/io/reader.py": "def read():\n    import torch\n    return torch\n"},  # heavy only on use
     "pk.top imports pk.io.reader inside a function, and it imports no heavy library: import it at "
     "the top (or say why not: # heavy: / # cycle: / # startup:)"),
    ({"pk/top.py": "def f():\n    from .io import reader  # heavy: torch\n    return reader\n"},
     "pk.top says '# heavy:' of pk.io.reader, which imports no heavy library (SimpleITK, itk, matplotlib, "
     "monai, nibabel, pydicom, scipy, torch)"),
    ({"pk/top.py": "def f():\n    from .io import reader  # cycle: top -> reader\n    return reader\n"},
     "pk.top says '# cycle:' of pk.io.reader, which closes no import cycle"),
    ({"pk/top.py": "def f():\n    from .io import reader  # startup: fast --help\n    return reader\n"},
     "pk.top says '# startup:' of pk.io.reader, which only the command line (pk.cli) may say"),
    ({"pk/top.py": "def f():\n    import pk.base\n    return pk.base\n"},
     "pk.top imports pk.base inside a function, and it imports no heavy library: import it at "
     "the top (or say why not: # heavy: / # cycle: / # startup:)"),
    ({"pk/top.py": "def f():\n    from pk import base\n    return base\n"},
     "pk.top imports pk.base inside a function, and it imports no heavy library: import it at "
     "the top (or say why not: # heavy: / # cycle: / # startup:)"),
])
def test_a_light_import_inside_a_function_is_found(pkg, files, what):
    _write(pkg, files)
    found = local_imports(pkg, "pk")
    assert [f.what for f in found] == [what], found
    assert found[0].file == str(Path("pk/top.py"))


@pytest.mark.parametrize("files", [
    {"pk/io/reader.py": "import torch\n"},  # the module imported imports a heavy library
    {"pk/io/reader.py": "from ..base import PUBLIC\n", "pk/base.py": "import scipy.ndimage\nPUBLIC = 2\n"},
    {"pk/io/__init__.py": "from . import fmt\n", "pk/io/fmt.py": "import matplotlib.pyplot as plt\n"},
    {"pk/io/reader.py": "try:\n    import pydicom\nexcept ImportError:\n    pydicom = None\n"},
    {"pk/top.py": "from . import base\n\n\ndef f():\n    from .io import (  # heavy: torch once read\n"
                  "        reader)\n    return reader\n",
     "pk/io/reader.py": "import torch\n"},
    {"pk/top.py": "from . import base\n\n\ndef f():\n    from .io import reader  # cycle: top -> reader\n"
                  "    return reader\n",
     "pk/io/reader.py": "def read():\n    from .. import top  # cycle: reader -> top\n    return top\n"},
    {"pk/top.py": "from .io import reader\n\n\ndef f():\n    import os\n    return reader, os\n"},
    {"pk/top.py": "X = 1\n", "pk/cli/__init__.py": "def main():\n    from .. import top  # startup: Ctrl-C\n"
                                                    "    return top\n"},
])
def test_heavy_and_stated_imports_inside_functions_pass(pkg, files):
    _write(pkg, files)
    assert local_imports(pkg, "pk") == []


def test_heavy_modules_follow_module_level_imports_only(pkg):
    _write(pkg, {"pk/base.py": "import torch.nn\n", "pk/io/reader.py": "def r():\n    import scipy\n"})
    heavy = heavy_modules(pkg, "pk")
    assert heavy == {"pk": set(), "pk._util": set(), "pk.base": {"torch"}, "pk.io": set(),
                     "pk.io.reader": set(), "pk.top": {"torch"}}


# -------------------------------------------------------------------- cycles and lengths, made up

def test_a_clean_package_has_no_cycle(pkg):
    assert import_cycles(pkg, "pk") == {}
    assert cycle_problems(pkg, {}, "pk") == []


#: pk.io.reader importing nothing (the fixture's imports pk.base, which would tie it into base's cycles)
_READER_ALONE = "def read():\n    return 1\n"


@pytest.mark.parametrize("code", [
    "from .top import f\n",  # module level
    "def g():\n    from . import top\n    return top\n",  # inside a function
    "import importlib\n\n\ndef g():\n    return importlib.import_module('pk.top')\n",
])
def test_a_cycle_is_found_with_its_imports(pkg, code):
    _write(pkg, {"pk/base.py": code, "pk/io/reader.py": _READER_ALONE})
    assert list(import_cycles(pkg, "pk")) == [("pk.base", "pk.top")]
    line = 2 if code.startswith("def") else 5 if "importlib" in code else 1
    assert cycle_problems(pkg, {}, "pk") == [
        f"import cycle: pk.base -> pk.top (pk/base.py:{line}) -> pk.base (pk/top.py:1)"]


def test_a_longer_cycle_and_a_knot(pkg):
    """Two cycles of three through pk.base (via pk.extra, via pk.io.reader) tie four modules in one
    knot: the first shortest cycle by name is shown, the knot's other module named."""
    _write(pkg, {"pk/base.py": "from .io import reader\nfrom . import extra\n",
                 "pk/io/reader.py": "def r():\n    from .. import top\n    return top\n",
                 "pk/top.py": "from . import base\n",
                 "pk/extra.py": "from . import top\n"})
    assert cycle_problems(pkg, {}, "pk") == [
        "import cycle: pk.base -> pk.extra (pk/base.py:2) -> pk.top (pk/extra.py:1) -> pk.base "
        "(pk/top.py:1); also in this knot: pk.io.reader"]


def test_type_checking_imports_close_no_cycle(pkg):
    guarded = "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .top import f\n"
    _write(pkg, {"pk/base.py": guarded})
    assert import_cycles(pkg, "pk") == {}


def test_a_lazily_resolved_name_closes_a_cycle(pkg):
    _write(pkg, {"pk/__init__.py": _LAZY_INIT, "pk/top.py": "from .io import reader\n",
                 "pk/io/reader.py": "def g():\n    from pk import f\n    return f\n"})
    assert list(import_cycles(pkg, "pk")) == [("pk.io.reader", "pk.top")]


def test_listed_cycles_pass_and_stale_entries_fail(pkg):
    _write(pkg, {"pk/base.py": "from .top import f\n", "pk/io/reader.py": _READER_ALONE})
    assert cycle_problems(pkg, {("pk.base", "pk.top"): "for now"}, "pk") == []
    _write(pkg, {"pk/base.py": "PUBLIC = 2\n"})  # the cycle is gone: its entry must go too
    assert cycle_problems(pkg, {("pk.base", "pk.top"): "for now"}, "pk") == [
        "('pk.base', 'pk.top') is listed as a cycle for now but is none: remove (or update) it"]


def test_module_length_limit(pkg):
    _write(pkg, {"pk/base.py": "x = 1\n" * 800, "pk/top.py": "x = 1\n" * 801})
    assert module_lengths(pkg, "pk")["pk.base"] == 800
    assert length_problems(pkg, {}, "pk", limit=800) == [
        "pk.top: 801 lines, over 800: split it into rooms a reader can hold in their head"]
    assert length_problems(pkg, {"pk.top": "for now"}, "pk", limit=800) == []
    _write(pkg, {"pk/top.py": "x = 1\n" * 10})  # split: its entry must go
    assert length_problems(pkg, {"pk.top": "for now", "pk.gone": "for now"}, "pk", limit=800) == [
        "pk.top is listed as too long for now but has 10 lines (limit 800): remove it from the list",
        "pk.gone is listed as too long for now but no longer exists: remove it from the list"]
