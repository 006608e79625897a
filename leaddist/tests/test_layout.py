"""The package layout (docs/ARCHITECTURE.md, "Layout"): imports go one way only.

Every module of the project's packages, tests and migrations aside, is read with ``ast``;
every import it makes, function-local ones included, is an edge between two packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)

# Package -> the packages it may import. `leaddist` is the wiring (settings, URLs, the API
# object, ASGI, the launcher): it may import everything, and nothing imports it but through
# leaddist.http (and leaddist.testing, for tests).
ALLOWED: dict[str, set[str]] = {
    "leaddist.http": set(),
    "events": {"leaddist.http"},
    "providers": {"leaddist.http", "events"},
    "allocation": {"leaddist.http", "events", "providers"},
    "credentials": {"leaddist.http"},
    "webhooks": {"leaddist.http", "events", "providers", "allocation"},
    # Lead delivery to providers (a row before the app exists costs nothing).
    "delivery": {"leaddist.http", "events", "providers", "allocation", "webhooks"},
    # Returns of leads by their providers (SPEC §9): quota credits through providers.
    "returns": {"leaddist.http", "events", "providers", "allocation"},
    "intake": {
        "leaddist.http",
        "events",
        "providers",
        "allocation",
        "credentials",
        "delivery",
        "returns",
    },
    "dashboard": {
        "leaddist.http",
        "returns",
        "events",
        "providers",
        "allocation",
        "credentials",
        "webhooks",
        "delivery",
    },
    # The provider portal (SPEC §9): provider accounts, their pages, JSON and stream.
    "portal": {
        "leaddist.http",
        "events",
        "providers",
        "allocation",
        "delivery",
        "returns",
    },
    "leaddist": {
        "portal",
        "returns",
        "leaddist.http",
        "events",
        "providers",
        "allocation",
        "credentials",
        "webhooks",
        "delivery",
        "intake",
        "dashboard",
    },
}


def project_apps() -> list[str]:
    """The installed apps that are this project's own packages."""
    return sorted(
        app.split(".")[0]
        for app in settings.INSTALLED_APPS
        if (ROOT / app.split(".")[0] / "__init__.py").is_file() and app.split(".")[0] != "leaddist"
    )


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "leaddist":
        return "leaddist.http" if parts[1:2] == ["http"] else "leaddist"
    return parts[0] if parts[0] in ALLOWED else None


def project_modules() -> dict[str, Path]:
    modules = {}
    for top in ["leaddist", *project_apps()]:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if {"tests", "migrations"} & set(rel.parts):
                continue
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            modules[module] = path
    return modules


def imports_of(path: Path, module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level or None]
                if path.name == "__init__.py":
                    base = module.split(".")[: len(module.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def package_edges() -> dict[tuple[str, str], set[str]]:
    """(from package, to package) -> the modules making that import."""
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in project_modules().items():
        source = package_of(module)
        for target in imports_of(path, module):
            dest = package_of(target)
            if dest is not None and dest != source:
                edges.setdefault((source, dest), set()).add(f"{module} imports {target}")
    return edges


def test_every_project_app_has_its_row():
    assert set(project_apps()) <= set(ALLOWED), "a new app needs its row in ALLOWED"
    assert {"events", "providers", "allocation", "credentials", "intake", "dashboard"} <= set(
        project_apps()
    )
    assert {package_of(m) for m in project_modules()} <= set(ALLOWED)
    assert len(project_modules()) > 40


def test_leaddist_http_imports_no_app():
    wrong = {
        edge: sorted(why)
        for edge, why in package_edges().items()
        if edge[0] == "leaddist.http" and edge[1] != "leaddist.http"
    }
    assert wrong == {}


def test_imports_follow_the_allowed_directions():
    wrong = {
        edge: sorted(why)
        for edge, why in package_edges().items()
        if edge[1] not in ALLOWED[edge[0]]
    }
    assert wrong == {}


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    """Fail with the first cycle found in ``graph`` (package -> packages it imports)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for source, dest in package_edges():
        graph.setdefault(source, set()).add(dest)
    assert_no_cycle(graph)


def test_the_allowed_table_itself_has_no_cycle():
    assert_no_cycle(ALLOWED)


def test_the_checker_sees_function_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from allocation.models import Lead\n    import events.hub\n")
    assert {"allocation.models", "allocation.models.Lead", "events.hub"} <= imports_of(
        module, "leaddist.http.m"
    )
