"""The typed protocol between actors (issue 12 point 1).

- No bare-string messages: every `.tell(` / `.ask(` / `.ask_future(` / `.inject(` in actors/, runtime/ and tests/ passes a
  message object, never a string literal or an f-string (scanned with `ast`, so grep-like tools can follow
  every message to its handler).
- Every actor declares its protocol in one HANDLERS table of frozen message types defined in messages/.
- Each running actor answers an unknown message with an error: logged as an error; an ask raises
  UnknownMessage in the asker; a tell is dropped and the actor keeps working (real service, real paper exchange).
"""

from __future__ import annotations

import ast
import socket
import threading
from pathlib import Path

import pytest
from loguru import logger

from actors.base import UnknownMessage
from actors.broker import BrokerActor
from actors.guard import GuardActor
from actors.ingress import IngressActor, OperatorIngressActor
from actors.notifier import NotifierActor
from actors.risk import RiskActor
from actors.store import StoreActor
from actors.watcher import WatcherActor
from messages.base import Frozen
from messages.broker import IsLoggedIn
from messages.control import GetLedger, GetNotifierStats, GetPort
from messages.risk import GetState
from messages.store import Sync
from messages.watcher import GetWatcherStatus
from runtime.config import PaperConfig, config_from_dict
from runtime.paper import PaperExchange
from runtime.system import System
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("actors", "runtime", "tests")
SENDS = {"tell", "ask", "ask_future", "inject"}  # System.inject tells an actor (tests)
ACTORS = (BrokerActor, GuardActor, IngressActor, OperatorIngressActor, NotifierActor, RiskActor, StoreActor,
          WatcherActor)


def string_messages(source: str, filename: str = "<src>") -> list[str]:
    """`file:line call` of every tell/ask whose message is a string literal or an f-string."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SENDS):
            continue
        # registry.tell(name, message) / ref.tell(message): the message is the second argument when there are
        # two, else the first (or message=).
        args = list(node.args)
        candidates = [k.value for k in node.keywords if k.arg == "message"]
        if not candidates and args:
            candidates = [args[1] if len(args) >= 2 else args[0]]
        for arg in candidates:
            if isinstance(arg, ast.JoinedStr) or (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                found.append(f"{filename}:{node.lineno} .{node.func.attr}({ast.unparse(arg)})")
    return found


def test_the_scan_finds_string_messages():
    bad = ('registry.tell("watcher", "lookup")\nregistry.ask("broker", f"ws:{s}", timeout=5)\n'
           'self.actor_ref.tell("flatten_round")\nregistry.ask_future("store", message="sync")\n'
           'system.inject("watcher", "ws:connected")\n')
    assert len(string_messages(bad)) == 5
    good = 'registry.tell("watcher", LookUp())\nself.actor_ref.tell(FlattenRound())\nfile.tell()\n'
    assert string_messages(good) == []


def test_no_string_messages_between_actors():
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += string_messages(path.read_text(), str(path.relative_to(ROOT)))
    assert found == [], "string messages (use a message model from messages/):\n" + "\n".join(found)


@pytest.mark.parametrize("actor", ACTORS, ids=lambda a: a.__name__)
def test_every_actor_declares_its_protocol_in_one_table(actor):
    assert "handle" not in vars(actor), "dispatch is the base's: declare handlers in HANDLERS"
    assert actor.HANDLERS, f"{actor.__name__} handles nothing"
    for kind, name in actor.HANDLERS.items():
        assert issubclass(kind, Frozen) and kind.__module__.startswith("messages."), kind
        assert kind.model_config.get("frozen") is True, kind
        assert callable(getattr(actor, name, None)), f"{actor.__name__}.{name} (for {kind.__name__}) is missing"


class Bogus(Frozen):
    """A message no actor handles."""


@pytest.fixture
def errors():
    """The ERROR records logged while the test runs."""
    records: list[str] = []
    lock = threading.Lock()

    def sink(message):
        with lock:
            records.append(message.record["message"])

    sink_id = logger.add(sink, level="ERROR")
    yield records
    logger.remove(sink_id)


# A known question for each actor: it still answers after an unknown tell (the actor did not die).
KNOWN = {"store": Sync(), "risk": GetState(), "guard": GetLedger(), "broker": IsLoggedIn(),
         "watcher": GetWatcherStatus(), "notifier": GetNotifierStats(), "ingress": GetPort(),
         "operator": GetPort()}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service (with the operator surface on its own listener, so both ingress actors run) for every
    actor's case."""
    exchange = PaperExchange(PaperConfig(port=0, fill_delay_ms=10, enforce_lot_tick=False))
    exchange.start()
    raw = {"service": {"data_dir": str(tmp_path_factory.mktemp("protocol") / "data"), "port": 0,
                       "shutdown_drain_s": 2},
           "webhook": {"secret_key": SECRET},
           "operator": {"port": _free_port()},
           "broker": {"mode": "shoonya", "rest_url": exchange.rest_url, "ws_url": exchange.ws_url,
                      "user_id": "TEST1", "poll_interval_s": 0.3, "request_timeout_s": 2},
           "telegram": {}, "risk": {"enforce_trading_hours": False}}
    system = System(config_from_dict(raw, environ={}), listen_port=0, log_to_stderr=False).start()
    try:
        yield system
    finally:
        system.stop()
        exchange.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_an_unknown_message_is_an_error(service, errors, name):
    registry = service.registry
    ref = registry.get(name)
    assert ref is not None, f"no actor {name}"
    with pytest.raises(UnknownMessage, match=f"{name} does not handle Bogus"):
        registry.ask(name, Bogus(), timeout=5)
    assert any("unknown message Bogus (asked)" in e and f"({name})" in e for e in errors), errors

    registry.tell(name, Bogus())
    # Answered in mailbox order: the tell was handled (and logged) before this known question.
    assert registry.ask(name, KNOWN[name], timeout=10) is not None
    assert any("unknown message Bogus (told)" in e and f"({name})" in e for e in errors), errors
    assert registry.get(name) is ref and ref.is_alive(), "an unknown tell must not kill the actor"
    assert service.supervisor.restarts == 0
