"""The layer rule (README "Layout"): messages <- storage <- actors <- runtime/system.py.

A static (ast) check of every import in actors/ messages/ storage/ runtime/, the function-level ones too:
- messages/ imports none of storage/, actors/, runtime/;
- storage/ imports neither actors/ nor runtime/;
- actors/ may use runtime.noren and runtime.config only, of runtime/;
- runtime/system.py is the only module of runtime/ that imports actors/ (the `oms` command reaches the few
  actor helpers it needs through it);
- storage/ owns the database: outside storage/ nothing imports peewee or storage.models, except the writer
  itself (STORE_EXCEPTION).
The detector is tested on small sources first, so a detector that sees nothing cannot pass silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "messages", "storage", "runtime")
ACTORS_MAY_USE = ("runtime.noren", "runtime.config")
ACTOR_IMPORTER = "runtime/system.py"
# actors/store.py is the StoreActor, the only writer (tests/test_store_only_writer.py): its OrderStore builds its
# constant INSERT/UPDATE statements from the models' metadata (table and column names) and runs them and a few
# peewee queries (children of a split leg, the amend of an exit leg) inside its own transactions. It imports
# storage.models for exactly that, and nothing else outside storage/ may.
STORE_EXCEPTION = "actors/store.py"


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every module an import statement names (`from a.b import c` gives a.b and a.b.c)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def violations(rel: str, source: str) -> list[str]:
    package = rel.split("/")[0]
    found = []
    for line, name in imported_modules(source):
        why = None
        if package == "messages" and any(_under(name, p) for p in ("storage", "actors", "runtime")):
            why = "messages/ imports only messages/"
        elif package == "storage" and any(_under(name, p) for p in ("actors", "runtime")):
            why = "storage/ imports neither actors/ nor runtime/"
        elif package == "actors" and _under(name, "runtime") and name != "runtime" \
                and not any(_under(name, p) for p in ACTORS_MAY_USE):
            why = f"actors/ may use only {', '.join(ACTORS_MAY_USE)} of runtime/"
        elif package == "runtime" and rel != ACTOR_IMPORTER and _under(name, "actors"):
            why = f"only {ACTOR_IMPORTER} imports actors/"
        if why is None and package != "storage" and rel != STORE_EXCEPTION \
                and (_under(name, "peewee") or _under(name, "storage.models")):
            why = "only storage/ touches the database models (peewee)"
        if why:
            found.append(f"{rel}:{line}: imports {name}: {why}")
    return sorted(set(found))


def service_modules() -> list[Path]:
    files = []
    for package in PACKAGES:
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return [f for f in files if "__pycache__" not in f.parts]


# ---- the detector itself -------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, source", [
    ("messages/x.py", "from storage import queries"),
    ("messages/x.py", "import actors.risk"),
    ("storage/x.py", "from actors.store import OrderStore"),
    ("storage/x.py", "def f():\n    from runtime.config import Config"),
    ("actors/x.py", "from runtime.system import System"),
    ("actors/x.py", "from runtime import registry"),
    ("actors/x.py", "from storage.models import Order"),
    ("actors/x.py", "import peewee"),
    ("actors/x.py", "from peewee import fn"),
    ("runtime/cli.py", "def f():\n    from actors.notifier import failure_kind"),
    ("runtime/x.py", "from actors import access"),
    ("runtime/system.py", "from storage.models import Order"),
    ("runtime/x.py", "from storage import models"),
])
def test_detector_flags_a_broken_rule(rel, source):
    assert violations(rel, source), f"the detector missed a broken layer rule in {rel}:\n{source}"


@pytest.mark.parametrize("rel, source", [
    ("messages/x.py", "from messages.orders import OrderSnapshot\nimport pydantic"),
    ("storage/x.py", "from messages.orders import OrderSnapshot\nfrom peewee import fn\nfrom storage.models import Order"),
    ("actors/x.py", "from runtime.noren.rest import NorenRestClient\nfrom runtime.config import Config"),
    ("actors/x.py", "from storage import queries\nfrom storage import transitions as T\nfrom actors.base import X"),
    ("runtime/system.py", "from actors.store import StoreActor\nfrom storage.db import open_database"),
    ("runtime/cli.py", "from runtime.system import failure_kind\nfrom storage import queries"),
    ("actors/store.py", "from storage.models import Order"),
])
def test_detector_passes_what_the_rule_allows(rel, source):
    assert violations(rel, source) == []


# ---- the rule ----------------------------------------------------------------------------------------------

def test_the_layer_rule_holds_in_every_module():
    files = service_modules()
    assert len(files) > 10 and ROOT / ACTOR_IMPORTER in files and ROOT / STORE_EXCEPTION in files
    offenders = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        offenders += violations(rel, path.read_text(encoding="utf-8"))
    assert offenders == [], "layer rule broken:\n" + "\n".join(offenders)


def test_the_exceptions_are_still_needed():
    """An exception nobody needs any more is taken out of the rule (it would only hide a later mistake)."""
    system = imported_modules((ROOT / ACTOR_IMPORTER).read_text(encoding="utf-8"))
    assert any(_under(name, "actors") for _, name in system)
    store = imported_modules((ROOT / STORE_EXCEPTION).read_text(encoding="utf-8"))
    assert any(_under(name, "storage.models") for _, name in store)
