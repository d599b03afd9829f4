"""StoreActor is the ONLY writer of `orders`, `order_events` and `alerts` (shared/DESIGN.md).

A static check over every module of the service (actors/ messages/ storage/ runtime/): outside actors/store.py
nothing may call a write method on those peewee models (Order.update(...), Alert.create(...), ...), save or
delete a row object obtained from them, or carry raw SQL that writes those tables. The detector is tested on
small sources first, so a detector that sees nothing cannot pass silently. Reads go through storage/'s read
functions: tests/test_layers.py checks that nothing outside storage/ (but this writer) imports the models at all.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "messages", "storage", "runtime")
ALLOWED_WRITER = Path("actors/store.py")
# Schema migrations (data backfills included) run inside open_database, before any actor exists: no StoreActor
# to go through, and no other writer yet.
MIGRATIONS = Path("storage/migrations.py")
GUARDED_TABLES = ("orders", "order_events", "alerts")


def guarded_models() -> set[str]:
    names = {"Order", "OrderEvent", "Alert"}
    try:
        from storage import models
    except ImportError:  # pragma: no cover - the package must import, but the check can still run
        return names
    return names | {m.__name__ for m in getattr(models, "STORE_OWNED_MODELS", ())}


MODEL_WRITES = frozenset({
    "insert", "insert_many", "insert_from", "replace", "replace_many", "update", "delete", "delete_by_id",
    "create", "get_or_create", "bulk_create", "bulk_update", "set_by_id", "truncate_table",
})
ROW_WRITES = frozenset({"save", "delete_instance"})
RAW_SQL = re.compile(
    r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+[\"'`\[]?"
    r"(?:" + "|".join(GUARDED_TABLES) + r")\b",
    re.IGNORECASE,
)


class _Writes(ast.NodeVisitor):
    """Collects write calls on the guarded models in one module."""

    def __init__(self, models: set[str]):
        self.models = models
        self.aliases: dict[str, str] = {}  # local name -> model name
        self.modules: set[str] = set()  # local names bound to storage.models
        self.rows: set[str] = set()  # local names holding rows/queries of a guarded model
        self.found: list[tuple[int, str]] = []

    # -- what names mean

    def visit_ImportFrom(self, node):
        if node.module and node.module.endswith("models"):
            for alias in node.names:
                if alias.name in self.models:
                    self.aliases[alias.asname or alias.name] = alias.name
        if node.module == "storage":
            for alias in node.names:
                if alias.name == "models":
                    self.modules.add(alias.asname or "models")
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.endswith("storage.models") or alias.name == "storage.models":
                self.modules.add(alias.asname or alias.name.split(".")[0])
        self.generic_visit(node)

    def model_of(self, node) -> str | None:
        """The guarded model an expression names (Order, O, models.Order, storage.models.Order)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr in self.models:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and (root.id in self.modules or root.id == "storage"):
                return node.attr
        return None

    def mentions_model(self, node) -> bool:
        return any(self.model_of(n) for n in ast.walk(node))

    def _bind(self, target, value):
        if value is not None and self.mentions_model(value):
            for n in ast.walk(target):
                if isinstance(n, ast.Name):
                    self.rows.add(n.id)

    def visit_Assign(self, node):
        for target in node.targets:
            self._bind(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._bind(node.target, node.value)
        self.generic_visit(node)

    def visit_NamedExpr(self, node):
        self._bind(node.target, node.value)
        self.generic_visit(node)

    def visit_For(self, node):
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_comprehension(self, node):
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    # -- the writes

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute):
            model = self.model_of(func.value)
            if model and func.attr in MODEL_WRITES:
                self.found.append((node.lineno, f"{model}.{func.attr}()"))
            elif func.attr in ROW_WRITES:
                receiver = func.value
                if (isinstance(receiver, ast.Name) and receiver.id in self.rows) or self.mentions_model(receiver):
                    self.found.append((node.lineno, f"<{ast.unparse(receiver)}>.{func.attr}()"))
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and RAW_SQL.search(node.value):
            self.found.append((node.lineno, f"raw SQL {RAW_SQL.search(node.value).group(0)!r}"))


def writes_in(source: str, filename: str = "<src>") -> list[tuple[int, str]]:
    """Two passes: the first learns which local names hold model rows (bound anywhere in the module)."""
    tree = ast.parse(source, filename)
    learn = _Writes(guarded_models())
    learn.visit(tree)
    check = _Writes(guarded_models())
    check.aliases, check.modules, check.rows = learn.aliases, learn.modules, set(learn.rows)
    check.visit(tree)
    return sorted(set(check.found))


def service_modules() -> list[Path]:
    files = []
    for package in PACKAGES:
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return [f for f in files if "__pycache__" not in f.parts]


# ---- the detector itself -------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "from storage.models import Order\nOrder.update(status='FAILED').where(Order.id == 1).execute()",
    "from storage.models import Alert\nAlert.create(outcome='x', http_status=1, received_at='', source='')",
    "from storage.models import OrderEvent as E\nE.insert_many([]).execute()",
    "from storage import models\nmodels.Order.delete().execute()",
    "import storage.models as m\nm.Alert.insert(outcome='x').execute()",
    "from storage.models import Order\nrow = Order.get_or_none(Order.id == 1)\nrow.status = 'X'\nrow.save()",
    "from storage.models import Order\nfor r in Order.select():\n    r.delete_instance()",
    "from storage.models import Order\nOrder(command_id='x').save()",
    "def f(db):\n    db.execute_sql('UPDATE orders SET status = ? WHERE id = ?', ('FAILED', 1))",
    "def f(db):\n    db.execute_sql(\"insert into order_events (command_id) values ('x')\")",
    "def f(db):\n    db.execute_sql('DELETE FROM alerts')",
])
def test_detector_flags_writes(source):
    assert writes_in(source), f"the detector missed a write in:\n{source}"


@pytest.mark.parametrize("source", [
    "from storage.models import Order\nrows = list(Order.select().where(Order.status == 'CREATED'))",
    "from storage.models import Order\nrow = Order.get_or_none(Order.command_id == 'x')\nprint(row.status)",
    "from storage.models import RiskState\nRiskState.insert(client_id='a').execute()",
    "from storage.models import RiskState\nrow = RiskState.get()\nrow.save()",
    "def f(db):\n    db.execute_sql('SELECT * FROM orders')",
    "from storage.models import ALL_MODELS\ndef f(db):\n    db.create_tables(ALL_MODELS)",
    "settings = {}\nsettings.update(a=1)",
])
def test_detector_ignores_reads_and_other_tables(source):
    assert writes_in(source) == []


def test_detector_sees_the_real_writer():
    """actors/store.py does write: if the detector found nothing there it would be blind, not the code clean."""
    found = writes_in((ROOT / ALLOWED_WRITER).read_text(encoding="utf-8"), str(ALLOWED_WRITER))
    assert found, "no write found in actors/store.py: the detector is not looking at the right things"


# ---- the rule ----------------------------------------------------------------------------------------------

def test_only_the_store_actor_writes_orders_events_and_alerts():
    files = service_modules()
    assert len(files) > 10 and ROOT / ALLOWED_WRITER in files
    offenders = []
    for path in files:
        rel = path.relative_to(ROOT)
        if rel in (ALLOWED_WRITER, MIGRATIONS):
            continue
        for line, what in writes_in(path.read_text(encoding="utf-8"), str(rel)):
            offenders.append(f"{rel}:{line}: {what}")
    assert offenders == [], "writes to orders/order_events/alerts outside actors/store.py:\n" + "\n".join(offenders)
