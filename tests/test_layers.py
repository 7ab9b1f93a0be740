"""The import graph of trtalk: packages layered and acyclic, modules acyclic, no private names
across packages.

Every module under trtalk/ is parsed (no import is executed) and every import in it is read,
function-level imports included, since a lazy import is still a dependency. A module belongs to
the package right under ``trtalk`` (``trtalk.face.align`` -> ``face``; ``trtalk/errors.py`` ->
``errors``; ``trtalk/__init__.py`` -> ``trtalk``, which holds only ``__version__``).

The layers, lowest first; a package may import only packages of strictly lower layers:

- ``trtalk``; ``errors``, ``signals``, ``net``; ``fsutil``, ``configcli``, ``threads``,
  ``httpguard``: the version; the user-error type, the SIGINT/SIGTERM helper (which atomic files
  consult before they commit), the loopback rule of the HTTP endpoints; atomic files,
  config-to-flags, the CPU thread policy, the request rules both HTTP endpoints share, the
  progress bars of long jobs.
- ``media``, ``audio``, ``kernels``: plumbing with no model in it: image/video decoding and
  the mp4 writer (PyAV, OpenCV), audio decoding and the mel frontend, the CUDA kernels and
  their torch references.
- ``models``, ``face``: the networks' shared building blocks (generator, modulated conv, FAN,
  ResNeXt, ResNet-SE, their exact rewrites, stage I/O, checkpoint reading; they may call the
  kernels), and face landmarks, alignment and paste-back (which read media).
- ``warp``: the mesh-warp renderer (built on face landmarks; the warp family's building block).
- ``motion``: blinks and speech-driven head motion on the output clock (may use warp and face).
- ``families``: the model families (PC-AVS, PD-FGC, the warp avatar): each one's composition,
  checkpoints, stages and runtime adapter, and the registry (with the plugins' entry points).
  Everything above asks the registry instead of naming a family.
- ``export``: ONNX / TensorRT / AOT export of any family's stages (with the engine file format,
  shared with the engine package).
- ``engine``: the backends behind one runner interface, and the engine cache.
- ``runtime``: sources, sinks, clocks, render and stream.
- ``bench``, ``serve``: timing of everything below; the web server (WebRTC sessions batched on one
  inference worker), a front end like render and stream.
- ``integrations``: the voice-agent frameworks (Pipecat, LiveKit Agents) on serve's sessions and
  scheduler, one shared scheduler per process.
- ``cli``: the ``trtalk`` command, which loads each package's subcommand by name; ``__main__``:
  ``python -m trtalk``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "trtalk"

LAYERS: list[set[str]] = [
    {"trtalk"},
    {"errors", "signals", "net"},
    {"fsutil", "configcli", "threads", "httpguard", "progress"},
    {"media", "audio", "kernels"},
    {"models", "face"},
    {"warp"},
    {"motion"},
    {"families"},
    {"export"},
    {"engine"},
    {"runtime"},
    {"bench", "serve"},
    {"integrations"},
    {"cli"},
    {"__main__"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported trtalk module, dotted
    names: tuple[str, ...]  # names taken with `from target import ...` (empty for `import target`)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def package_of(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "trtalk"


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def trtalk_imports() -> list[Import]:
    """Every import of a trtalk module by a trtalk module, wherever in the file it sits."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "trtalk" or alias.name.startswith("trtalk."):
                        out.append(Import(module, node.lineno, alias.name, ()))
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    target = _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
                if not (target == "trtalk" or target.startswith("trtalk.")):
                    continue
                names = tuple(a.name for a in node.names)
                # `from trtalk.pkg import submodule` depends on the submodule's package
                for name in names:
                    sub = f"{target}.{name}"
                    if _is_module(sub):
                        out.append(Import(module, node.lineno, sub, ()))
                    else:
                        out.append(Import(module, node.lineno, target, (name,)))
    return out


def package_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        a, b = package_of(imp.module), package_of(imp.target)
        if a != b:
            graph[a].add(b)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = trtalk_imports()
    assert len(found) > 100  # the parser saw the package
    return found


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert package_of("trtalk.face.align") == "face" and package_of("trtalk") == "trtalk"


def test_every_package_has_a_layer() -> None:
    packages = {package_of(_module_name(p)) for p in PKG.rglob("*.py")}
    assert packages - set(RANK) == set(), "add the new package to LAYERS"
    assert set(RANK) - packages == set(), "LAYERS names a package that does not exist"


def test_no_import_cycle_between_packages(imports: list[Import]) -> None:
    graph = package_graph(imports)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def module_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the trtalk modules it imports (anywhere in the file). A package's ``__init__``
    counts as the package's module; importing ``a.b.c`` also runs ``a`` and ``a.b``'s
    ``__init__``, which is not counted (it is not a dependency the importing file chose)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph


def test_no_import_cycle_between_modules(imports: list[Import]) -> None:
    graph = module_graph(imports)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_module_graph_sees_function_level_imports() -> None:
    """The module test is not vacuous: a lazy import inside a function is an edge."""
    found = trtalk_imports()
    lazy = [i for i in found if i.module == "trtalk.runtime.options" and i.target == "trtalk.engine.runner"]
    assert lazy, "runtime.options imports engine.runner (at module level or in a function)"
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.x"}}) == ["a.x", "a.y", "a.x"]


def test_no_upward_or_sideways_import(imports: list[Import]) -> None:
    bad = sorted({
        f"{imp.module}:{imp.line} imports {imp.target} "
        f"({package_of(imp.module)} is layer {RANK[package_of(imp.module)]}, "
        f"{package_of(imp.target)} is layer {RANK[package_of(imp.target)]})"
        for imp in imports
        if package_of(imp.module) != package_of(imp.target)
        and RANK[package_of(imp.target)] >= RANK[package_of(imp.module)]
    })
    assert bad == [], "\n".join(bad)


def test_no_private_name_imported_across_packages(imports: list[Import]) -> None:
    bad = [
        f"{imp.module}:{imp.line} takes {name} from {imp.target}"
        for imp in imports
        if package_of(imp.module) != package_of(imp.target)
        for name in imp.names
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
    ] + [
        f"{imp.module}:{imp.line} imports the private module {imp.target}"
        for imp in imports
        if package_of(imp.module) != package_of(imp.target)
        and any(p.startswith("_") and p != "__init__" for p in imp.target.split("."))
    ]
    assert bad == [], "\n".join(bad)


# ----------------------------------------------------------------- imports without optional deps

BLOCKED = ("mediapipe", "av")
LIGHT_MODULES = ("trtalk", "trtalk.models", "trtalk.engine", "trtalk.export.stages", "trtalk.face",
                 "trtalk.media", "trtalk.media.sinks", "trtalk.warp", "trtalk.cli")


def test_core_imports_without_mediapipe_and_pyav() -> None:
    """The networks, the engine and the export stages import on a machine without mediapipe and
    PyAV (a GPU server that only builds engines); face and media load them on first use."""
    code = (
        "import importlib, sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
        + f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "try:\n"
        "    import av\n"
        "except ImportError:\n"
        "    print('av blocked')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "av blocked"  # the block held: nothing above needed PyAV


def test_test_fixtures_import_without_pyav() -> None:
    """tests/conftest.py imports PyAV only inside the helpers that write media."""
    code = ("import sys\nsys.modules['av'] = None\n"
            f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "import conftest\nprint(conftest.write_wav.__name__)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "write_wav"


# ----------------------------------------------------------------- names


def test_public_class_names_are_unique() -> None:
    """No two modules define a public class of the same name (a reader, or an import, never
    takes one for the other)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(_module_name(path))
    dupes = {name: mods for name, mods in where.items() if len(mods) > 1}
    assert dupes == {}, dupes
    assert "WarpAvatar" in where and "Avatar" in where and "FaceTracker" in where  # the parse saw them


def test_the_crop_matrix_is_spelled_crop_m() -> None:
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(PKG.rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if "crop_M" in line]
    assert bad == [], bad
