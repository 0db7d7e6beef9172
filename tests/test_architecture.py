"""The package's shape, as docs/architecture.md describes it: no import cycles (imports inside
functions included), a core that never imports Gradio, and a public API that loads lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import app
from app.storage import REPO_ROOT

APP = REPO_ROOT / "app"
CORE = ("steering", "models", "analysis", "preferences")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in APP.rglob("*.py")}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every app module that ``path`` imports, at module level or inside a function.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot make a cycle.
    """
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif base in known:
                    found.add(base)
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported_modules(path, known) for name, path in modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_are_seen(tmp_path: Path):
    graph = import_graph()
    # app.commands.bench imports the bench only inside main(), so --help stays fast
    assert "app.bench.run" in graph["app.commands.bench"]
    assert "app.lab" in graph["app.bench.run"]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", CORE)
def test_the_core_never_imports_gradio(package: str):
    for path in (APP / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in {"gradio", "app"} and n.startswith(("gradio", "app.ui"))}, (
            path
        )


@pytest.mark.parametrize("package", CORE)
def test_the_core_never_imports_the_web_server(package: str):
    for path in (APP / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in {"fastapi", "starlette", "uvicorn"}}, path
        assert not {n for n in names if n == "app.api" or n.startswith("app.api.")}, path


def test_no_part_of_the_core_reaches_into_the_ui_or_commands():
    graph = import_graph()
    for name, imported in graph.items():
        if name.split(".")[1:2] and name.split(".")[1] in CORE:
            assert not {
                m for m in imported if m.startswith(("app.ui", "app.commands", "app.bench", "app.experiments"))
            }, name


def test_the_api_stands_beside_the_ui_not_under_it():
    graph = import_graph()
    for name, imported in graph.items():
        if name == "app.api" or name.startswith("app.api."):
            assert not {m for m in imported if m == "app.ui" or m.startswith("app.ui.")}, name


def test_code_cites_only_documents_in_the_repository():
    for path in APP.rglob("*.py"):
        assert "DESIGN §" not in path.read_text(encoding="utf-8"), path


def test_the_public_api_lists_names_that_exist():
    assert sorted(app.__all__) == sorted(app._EXPORTS)
    for name in app.__all__:
        assert getattr(app, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        app.no_such_name  # noqa: B018


def test_importing_the_package_and_every_command_parser_does_not_import_torch():
    code = "import sys, app; from app import cli; cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_command_module_is_a_registered_command():
    from app.cli import COMMANDS

    helpers = {"__init__", "common", "setup_models"}  # shared code, and setup_local_cache.sh's entry point
    files = {p.stem for p in (APP / "commands").glob("*.py")} - helpers
    assert files == {module.rpartition(".")[2] for module, _ in COMMANDS.values()}


def test_every_command_parses_its_help(capsys: pytest.CaptureFixture[str]):
    from app.cli import COMMANDS, build_parser

    parser = build_parser()  # imports every command module: one that fails to import fails here
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: python -m app " + name in capsys.readouterr().out


def test_every_tab_module_is_in_the_app_once():
    from app.ui.app import TABS

    tab_modules = {p.stem for p in (APP / "ui").glob("*.py")} - {
        "__init__",
        "app",
        "state",
        "health",
        "analysis_helpers",
        "playground_setup",
        "preference_widgets",
    }
    labels = [tab.label for tab in TABS]
    assert len(set(labels)) == len(labels) == len(tab_modules) == 8
    assert {tab.build.__module__.rpartition(".")[2] for tab in TABS} == tab_modules


def test_imports_for_type_checking_only_are_not_edges(tmp_path: Path):
    module = APP / "preferences" / "chat.py"
    assert "from app.lab import Lab" in module.read_text(encoding="utf-8")
    assert "app.lab" not in imported_modules(module, set(modules()))


def test_tests_cannot_reach_another_machine():
    import socket

    from tests.network_guard import NetworkBlocked

    with pytest.warns(pytest.PytestWarning, match="blocked"), pytest.raises(NetworkBlocked):
        socket.getaddrinfo("example.org", 443)
