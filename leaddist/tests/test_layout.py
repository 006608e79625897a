"""The package layout (docs/ARCHITECTURE.md, "Layout"): imports go one way only.

Every module of the project's packages, tests and migrations aside, is read with ``ast``;
every import it makes, function-local ones included, is an edge between two packages.
"""

from __future__ import annotations

import ast
import re
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


# --- SQL names only its own app's tables ----------------------------------------------------
#
# Hand-written SQL (STYLE: one module per app, on a measured hot path) may name another app's
# table only where that saves a round trip that was measured, and only in the direction the
# import table allows. Each such pair is listed here with its reason; anything else fails.
SQL_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("allocation", "providers"): "the engine's two statements lock and read the catalogue and "
    "take the quotas and the cursor under those locks, one round trip each (ARCHITECTURE.md)",
    ("allocation", "events"): "lead.allocated / lead.waiting is inserted by the allocating "
    "statement, so it commits with the lead and costs no round trip under the provider locks",
    ("delivery", "allocation"): "delivery's trigger on the allocation rows inserts the lead's "
    "deliveries in the allocating statement (migration 0006); a claim reads the lead it sends",
    ("delivery", "providers"): "a claim reads the service's slug and name it sends",
    ("delivery", "events"): "the record and resend statements insert delivery.updated with "
    "the change they make: one statement per batch of attempts",
}


def table_owners() -> dict[str, str]:
    """Every project model's table -> the package of the app that owns it."""
    from django.apps import apps

    owners = {}
    for model in apps.get_models(include_auto_created=True):
        package = package_of(model.__module__)
        if package is not None:
            owners[model._meta.db_table] = package
    return owners


def sql_sources() -> dict[str, tuple[str, str]]:
    """Every module of the apps, migrations included: module -> (package, source text)."""
    sources = {}
    for top in project_apps():
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts:
                continue
            module = ".".join(rel.with_suffix("").parts)
            sources[module] = (package_of(module) or top, path.read_text())
    return sources


def tables_named(package: str | None, source: str, owners: dict[str, str]) -> set[str]:
    """Other apps' tables that ``source`` names: literally in its text, or through another
    app's model (``Model._meta.db_table``). ``package`` None: every app's tables, its own too."""
    named = {
        table
        for table, owner in owners.items()
        if owner != package and re.search(rf"\b{re.escape(table)}\b", source)
    }
    imported = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = package_of(node.module)
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "db_table"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "_meta"
            and isinstance(node.value.value, ast.Name)
        ):
            owner = imported.get(node.value.value.id)
            if owner is not None and owner != package:
                named.add(f"{owner} (through {node.value.value.id}._meta.db_table)")
    return named


def test_no_app_sql_names_another_apps_tables_but_the_listed_exceptions():
    owners = table_owners()
    wrong = {}
    for module, (package, source) in sql_sources().items():
        for table in tables_named(package, source, owners):
            owner = owners.get(table) or table.split(" ")[0]
            if (package, owner) not in SQL_EXCEPTIONS:
                wrong.setdefault(module, []).append(table)
    assert wrong == {}


def test_every_sql_exception_is_still_needed():
    owners = table_owners()
    used = set()
    for _, (package, source) in sql_sources().items():
        for table in tables_named(package, source, owners):
            used.add((package, owners.get(table) or table.split(" ")[0]))
    assert set(SQL_EXCEPTIONS) <= used


def test_no_module_names_procrastinates_tables_functions_or_triggers():
    """procrastinate is reached through its public API only: any release may rename them."""
    named = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.rglob("*.py"))
        if ".venv" not in path.parts
        and path != Path(__file__)
        and "procrastinate_" in path.read_text()
    ]
    assert named == []


def test_the_table_checker_sees_names_and_models_of_other_apps():
    owners = {"delivery_delivery": "delivery", "allocation_lead": "allocation"}
    source = (
        "from allocation.models import Lead\nT = Lead._meta.db_table\n"
        "SQL = 'SELECT 1 FROM delivery_delivery'\n"
    )

    assert tables_named("dashboard", source, owners) == {
        "delivery_delivery",
        "allocation (through Lead._meta.db_table)",
    }


# --- Hand-written SQL in one module per app --------------------------------------------------
#
# STYLE: where a measured hot path needs SQL, it lives in its app's sql.py, with table names and
# choices from the models. No other module of an app holds a statement, names another app's
# table, or takes a table's name from a model (tests aside; migrations too: a migration's SQL is
# the schema as it was then, and must not change with today's models). Its own tables' names
# written out are not counted: prose says them, and the models module declares them.

# A string that reads as a statement; keywords in capitals, as the project writes SQL.
STATEMENT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b"
    r"|\bSELECT\s+\w+\("
    r"|\bINSERT\s+INTO\b"
    r"|\bUPDATE\s+\S+\s+(?:AS\s+\w+\s+)?SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\bSET\s+TRANSACTION\b"
)


def statements_in(source: str) -> list[str]:
    """The string literals of ``source`` that read as SQL statements, docstrings aside; an
    f-string is read whole, each of its values standing as ``{}``."""
    tree = ast.parse(source)
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skipped.add(id(first.value))
        elif isinstance(node, ast.JoinedStr):
            skipped.update(id(value) for value in node.values)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in skipped:
                continue
            text = node.value
        else:
            continue
        if STATEMENT.search(text):
            found.append(" ".join(text.split())[:60])
    return found


def hand_written_sql(package: str, source: str, owners: dict[str, str]) -> list[str]:
    """What in ``source`` is hand-written SQL: the tables it names (another app's, or any
    app's through its model) and the statements in its strings."""
    tables = {t for t in tables_named(None, source, owners) if owners.get(t) != package}
    return sorted(tables) + statements_in(source)


def outside_sql_modules() -> dict[str, tuple[str, str]]:
    return {
        module: (package, source)
        for module, (package, source) in sql_sources().items()
        if module != f"{package}.sql" and "migrations" not in module.split(".")
    }


def test_hand_written_sql_lives_only_in_each_apps_sql_module():
    owners = table_owners()
    wrong = {}
    for module, (package, source) in outside_sql_modules().items():
        found = hand_written_sql(package, source, owners)
        if found:
            wrong[module] = found
    assert wrong == {}


def test_the_sql_checker_sees_the_statements_of_every_sql_module():
    owners = table_owners()
    seen = {
        module: hand_written_sql(package, source, owners)
        for module, (package, source) in sql_sources().items()
        if module == f"{package}.sql"
    }

    assert set(seen) == {
        "allocation.sql",
        "credentials.sql",
        "delivery.sql",
        "providers.sql",
    }
    assert [module for module, found in seen.items() if not found] == []


def test_the_sql_checker_sees_statements_and_tables_from_models_but_not_prose():
    owners = {"allocation_lead": "allocation", "allocation_apikey": "credentials"}
    source = (
        '"""Reads SELECT id FROM allocation_lead, row by row."""\n'
        "from allocation.models import Lead\n"
        "T = Lead._meta.db_table\n"
        "def f(n):\n"
        '    """UPDATE a SET b in prose."""\n'
        "    return f'SELECT id FROM {T} LIMIT {n}'\n"
        "LOCK = 'SELECT pg_advisory_xact_lock(%s)'\n"
        "RO = 'SET TRANSACTION READ ONLY'\n"
        "class Meta:\n"
        "    db_table = 'allocation_apikey'\n"
    )

    found = hand_written_sql("allocation", source, owners)
    declared = hand_written_sql("credentials", source, owners)

    assert set(found) == {
        "allocation (through Lead._meta.db_table)",
        "allocation_apikey",
        "SELECT id FROM {} LIMIT {}",
        "SELECT pg_advisory_xact_lock(%s)",
        "SET TRANSACTION READ ONLY",
    }
    assert "allocation_lead" not in found
    assert "allocation_apikey" not in declared
