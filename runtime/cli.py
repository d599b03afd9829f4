"""The `oms` command. Exit codes: 0 ok, 1 a check found a problem, 2 usage or configuration error or a refused
start (a second instance, live mode with the sample secret)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from runtime.config import Config, ConfigError, check_startable, config_from_dict, load_config

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
# `oms run` holds this lock in its data_dir for its whole life (runtime/instance_lock.py).
RUN_LOCK = "oms.lock"


class RefusedStart(Exception):
    """A start that must not happen (another instance holds the lock): one line, exit 2."""


def _out(text: str = "", file=None, flush: bool = False) -> None:
    """The command's own output (not logging): stdout unless told otherwise."""
    stream = file or sys.stdout
    stream.write(f"{text}\n")
    if flush:
        stream.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default exit code is 2 as well; keep the message to one line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"oms: error: {message}\n")


def _config(args) -> Config:
    return load_config(args.config)


def _open_db(config: Config):
    from storage.db import open_database
    from storage.migrations import SchemaError

    path = Path(config.service.data_dir) / "orders.db"
    if not path.exists():
        raise ConfigError(f"{path}: no database yet (has `oms run` been started with this data_dir?)")
    try:
        return open_database(path, synchronous=config.service.db_synchronous)
    except SchemaError as exc:  # e.g. a database of a newer release: one line, exit 2, like a config error
        _out(f"oms: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _wait_for_signal(fatal: threading.Event | None = None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if fatal is not None and fatal.is_set():
            return


def _lock(path: Path, what: str):
    from runtime import instance_lock

    try:
        return instance_lock.acquire(path, what)
    except instance_lock.InstanceLocked as exc:
        raise RefusedStart(str(exc)) from None
    except OSError as exc:
        raise RefusedStart(f"cannot create the lock file {path}: {exc.strerror}") from None


def run_lock_path(config: Config) -> Path:
    """The lock `oms run` holds on its data_dir (`oms doctor` asks `instance_lock.is_held` of it)."""
    return Path(config.service.data_dir) / RUN_LOCK


def paper_lock_path(config: Config, embedded: bool) -> Path:
    """`<state_file>.lock` of the paper exchange: default state "<data_dir>/paper_state.json" embedded in
    `oms run`, "./paper_state.json" for `oms paper`."""
    state_file = getattr(config.paper, "state_file", None)
    if state_file is None and not embedded:
        # `[paper] state_file` arrives with the exchange's persisted state (another branch); until then two
        # `oms paper` started in the same directory are the same exchange.
        return Path("paper.lock")
    if not state_file:
        state_file = str(Path(config.service.data_dir) / "paper_state.json") if embedded else "paper_state.json"
    return Path(f"{state_file}.lock")


def cmd_run(args) -> int:
    from loguru import logger

    from runtime.system import ListenerBindError, StartRefused, System

    config = _config(args)
    check_startable(config)
    locks = [_lock(run_lock_path(config), "oms run")]
    try:
        b = config.broker
        if b.mode == "paper" and not (b.rest_url and b.ws_url):  # the embedded exchange: its state is ours alone
            locks.append(_lock(paper_lock_path(config, embedded=True), "a paper exchange"))
        logger.remove()
        system = System(config, listen_port=args.port)
        try:
            system.start()
        except ListenerBindError as exc:  # a busy port: one line naming host:port and the config key
            _out(f"oms: {exc}", file=sys.stderr)
            system.stop()
            return EXIT_USAGE
        except StartRefused as exc:  # e.g. the broker rejects the credentials: the service closes, then says why
            system.stop()
            _out(f"oms: {exc}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - a start-up failure must be one readable line, exit 2
            logger.opt(exception=exc).error("start-up failed: {}", exc)  # the JSON log keeps the traceback
            system.stop()
            _out(f"oms: start-up failed: {exc}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        logger.info("risk.enforce_trading_hours = {} (broker.mode {}; unset it follows the mode)",
                    str(config.risk.enforce_trading_hours).lower(), b.mode)
        try:
            _wait_for_signal(system.fatal)
        finally:
            system.stop()
        # The listener stopped on its own (logged and notified): exit non-zero so that a supervisor restarts us.
        return EXIT_PROBLEM if system.fatal.is_set() else EXIT_OK
    finally:
        for lock in reversed(locks):
            lock.release()


def cmd_paper(args) -> int:
    from loguru import logger

    from runtime.paper import PaperExchange

    config = load_config(args.config) if args.config else load_config()
    lock = _lock(paper_lock_path(config, embedded=False), "oms paper")
    try:
        logger.remove()
        logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss.SSS} {level: <7} {message}")
        exchange = PaperExchange(config.paper, host=args.host, port=args.port, seed=args.seed)
        exchange.serve_forever()
    finally:
        lock.release()
    return EXIT_OK


IST = timezone(timedelta(hours=5, minutes=30))
TABLE_WIDTH = 120
_STATUS_SHORT = {"SENT_TO_BROKER": "SENT"}
_BROKER_SHORT = {"TRIGGER_PENDING": "TRIGGER"}


def _ist(iso: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(iso).astimezone(IST) if iso else None
    except ValueError:
        return None


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def format_orders(rows: list[dict], width: int = TABLE_WIDTH) -> list[str]:
    """The order book as lines of at most `width` characters: times in IST (a date line where the date
    changes), SENT_TO_BROKER shown as SENT, the broker's own status, the tag cut to what is left.
    Strategy and symbol give up characters only when the tag would get fewer than TAG_MIN."""
    headers = ("TIME IST", "COMMAND_ID", "STRATEGY", "SYMBOL", "SIDE", "FILLED", "STATUS", "BROKER", "TAG")
    table = []
    for r in rows:
        at = _ist(r.get("created_at"))
        kind = {"ENTRY": "EN", "EXIT": "EX"}.get(r.get("execution_type") or "", r.get("execution_type") or "")
        table.append((at, [
            at.strftime("%H:%M:%S") if at else "", str(r.get("command_id") or ""), str(r.get("strategy_name") or ""),
            str(r.get("symbol") or ""), f"{kind} {r.get('side') or ''}".strip(),
            f"{r.get('filled_qty') or 0}/{r.get('quantity') or 0}",
            _STATUS_SHORT.get(r.get("status"), r.get("status") or ""),
            _BROKER_SHORT.get(r.get("broker_status"), r.get("broker_status") or "-"), str(r.get("tag") or ""),
        ]))
    sep, tag_min = 2, 16
    widths = [max([len(h)] + [len(cells[i]) for _, cells in table]) for i, h in enumerate(headers)]
    mins = {2: 8, 3: 14}  # strategy, symbol: what they may shrink to
    fixed = sum(widths[:-1]) + sep * (len(headers) - 1)
    for i in (2, 3):
        if width - fixed < tag_min:
            cut = min(tag_min - (width - fixed), max(widths[i] - mins[i], 0))
            widths[i] -= cut
            fixed -= cut
    widths[-1] = max(min(widths[-1], width - fixed), 0)

    def line(cells: list[str]) -> str:
        return (" " * sep).join(_clip(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out, day = [line(list(headers))], None
    for at, cells in table:
        if at is not None and at.date() != day:
            day = at.date()
            out.append(f"-- {day.isoformat()} --")
        out.append(line(cells))
    return out


def cmd_orders(args) -> int:
    from storage import queries
    from storage.transitions import STATUSES

    status = args.status.strip().upper() if args.status is not None else None
    if status is not None and status not in STATUSES:
        _out(f"oms: error: --status {args.status!r} is not an order status; valid: {', '.join(STATUSES)}",
             file=sys.stderr)
        return EXIT_USAGE
    config = _config(args)
    _open_db(config)
    rows = queries.list_orders(status, args.strategy, args.symbol, args.limit)
    if args.json:
        _out(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    for text in format_orders(rows):
        _out(text)
    _out(f"{len(rows)} order(s)")
    return EXIT_OK


def cmd_verify(args) -> int:
    from storage import queries

    config = _config(args)
    _open_db(config)
    counts = queries.counts_by_status()
    threshold = args.stuck_after if args.stuck_after is not None else config.service.stuck_after_s
    stuck = queries.stuck_orders(threshold)
    _out("orders by status: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if stuck:
        _out(f"{len(stuck)} order(s) stuck: non-terminal without broker confirmation for more than {threshold:g}s:")
        for o in stuck:
            _out(f"  {o['command_id']}  {o['strategy_name']}  {o['symbol']}  {o['status']}  "
                 f"broker_status={o['broker_status'] or '-'}  broker_id={o['broker_order_id'] or '-'}  "
                 f"updated_at={o['updated_at']}")
        return EXIT_PROBLEM
    _out(f"no order without broker confirmation for more than {threshold:g}s")
    return EXIT_OK


def _alert_error(data: dict) -> str:
    """The reason of a refused alert: its `error` field, or the text StoreActor put in parentheses after the
    outcome ("alert <id> <outcome> (<error>)")."""
    if data.get("error"):
        return str(data["error"])
    message = str(data.get("message", ""))
    head = f"alert {data.get('alert_id') or '-'} {data.get('outcome')} ("
    return message[len(head):-1] if message.startswith(head) and message.endswith(")") else ""


def format_event_line(data: dict) -> str:
    from runtime.system import failure_kind

    at = str(data.get("at", ""))[11:23]
    event = data.get("event", "")
    if event == "order":
        tag = f" [{data['tag']}]" if data.get("tag") else ""
        fill = f" filled={data.get('filled_qty')}@{data.get('avg_price')}" if data.get("filled_qty") else ""
        moved = data.get("from_status") != data.get("to_status")
        what = (f"{data.get('from_status') or '-'} -> {data.get('to_status')}" if moved
                else f"{data.get('to_status')} broker_id={data.get('broker_order_id')}")
        if moved and data.get("to_status") == "FAILED":
            what += f" ({failure_kind(data.get('tag'))})"  # cancelled, blocked, rejected, expired, failed
        return f"{at} ORDER {data.get('command_id')} {data.get('strategy')} {data.get('symbol')} {what}{tag}{fill}"
    if event == "alert":
        line = " ".join(filter(None, (at, "ALERT", data.get("alert_id") or "-", data.get("strategy"),
                                      str(data.get("outcome")), f"({data.get('http_status')})")))
        refused = isinstance(data.get("http_status"), int) and data["http_status"] >= 400
        error = _alert_error(data) if refused else ""
        return f"{line}: {error}" if error else line
    return f"{at} {event.upper() or data.get('level', '')} {data.get('message', '')}"


def _matches(data: dict, args) -> bool:
    if args.command_id and data.get("command_id") != args.command_id:
        return False
    if args.strategy and data.get("strategy") != args.strategy:
        return False
    return True


def _render(raw: str, args) -> str | None:
    """The line to print for one events.jsonl line, or None if it is filtered out (or not JSON)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return format_event_line(data) if isinstance(data, dict) and _matches(data, args) else None


def cmd_tail(args) -> int:
    """History (all of it, or the last -n lines that pass the filters), then with --follow what comes next.
    --follow alone starts at the end, like tail -f."""
    from collections import deque

    config = _config(args)
    if args.lines is not None and args.lines < 0:
        raise ConfigError("--lines must be 0 or more")
    path = Path(config.service.data_dir) / "logs" / "events.jsonl"
    if not path.exists() and not args.follow:
        raise ConfigError(f"{path}: no event log yet")
    stop = threading.Event()
    if args.follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    while not path.exists():
        if stop.wait(0.2):
            return EXIT_OK
    fh = path.open(encoding="utf-8")
    try:
        inode = os.fstat(fh.fileno()).st_ino
        partial = ""  # a line still being written: completed by the next read
        if args.follow and args.lines is None:
            fh.seek(0, os.SEEK_END)
        else:
            # -n counts lines that pass the filters; without -n (and without --follow) all of the history
            recent = deque(maxlen=args.lines) if args.lines is not None else None
            while raw := fh.readline():
                if not raw.endswith("\n"):
                    partial = raw
                    break
                line = _render(raw, args)
                if line is None:
                    continue
                if recent is None:
                    _out(line)
                else:
                    recent.append(line)
            for line in recent or ():
                _out(line)
            sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        while not stop.is_set():
            raw = fh.readline()
            if raw:
                partial += raw
                if partial.endswith("\n"):
                    line, partial = _render(partial, args), ""
                    if line is not None:
                        _out(line, flush=True)
                continue
            if path.exists() and path.stat().st_ino != inode:  # rotated: follow the new file
                fh.close()
                fh = path.open(encoding="utf-8")
                inode = os.fstat(fh.fileno()).st_ino
                partial = ""
                continue
            stop.wait(0.2)
    finally:
        fh.close()
    return EXIT_OK


def cmd_bench(args) -> int:
    from runtime.bench import Options, run_bench

    for name in ("orders", "burst", "soak_orders"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("rate", "soak_rate"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    options = Options(orders=args.orders, rate=args.rate, burst=args.burst, watch=args.watch, json_path=args.json,
                      soak=args.soak, quick=args.quick, keep=args.keep, soak_rate=args.soak_rate,
                      dashboards=args.dashboards)
    if args.soak_orders is not None:
        options.soak_orders = args.soak_orders
    return run_bench(options)


class ServiceError(Exception):
    """The running service could not be reached or refused the request (exit 1)."""


def _service_url(config: Config) -> str:
    """Where the operator surface listens: its own `[operator] host/port`, else the service's."""
    separate = bool(config.operator.port)
    host = (config.operator.host or config.service.host) if separate else config.service.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    port = config.operator.port if separate else config.service.port
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def cmd_operator(args) -> int:
    """`oms operator hash-password`: a scrypt hash for `[operator] password` (the password itself is read
    without echo, or from standard input when it is not a terminal; it is never printed)."""
    import getpass

    from runtime.system import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("operator password: ")
        if getpass.getpass("again: ") != password:
            _out("oms: the two passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        _out("oms: use at least 12 characters", file=sys.stderr)
        return EXIT_USAGE
    _out(hash_password(password))
    return EXIT_OK


def _service_call(config: Config, method: str, path: str, body: dict | None = None) -> dict:
    import requests

    from runtime.operator_token import operator_token

    url = _service_url(config) + path
    # The operator token: `[operator] token`, else the one the service generated into its data_dir.
    token = operator_token(config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        reply = requests.request(method, url, json=body, timeout=20, headers=headers)
    except requests.RequestException as exc:
        raise ServiceError(f"cannot reach the service at {url} ({type(exc).__name__}); is `oms run` running "
                           f"with this config?") from None
    try:
        data = reply.json()
    except ValueError:
        data = {"error": reply.text[:200]}
    if reply.status_code == 409 and isinstance(data, dict) and "state" in data:
        return data  # resume answered, but entries stay blocked: the caller explains
    if reply.status_code not in (200, 202):
        raise ServiceError(f"{method} {path}: HTTP {reply.status_code}: {data.get('error', data)}")
    return data


def _money(value) -> str:
    return "-" if value is None else f"{value:,.2f}"


def format_risk(view: dict) -> list[str]:
    """GET /risk as a few readable lines."""
    limits = view.get("limits", {})
    reason = f" ({view['reason']})" if view.get("reason") else ""
    lines = [f"state      {view.get('state')}{reason}   mode {view.get('mode')}   day {view.get('day')}"]
    pnl = _money(view.get("pnl")) if view.get("pnl_known", True) else "unknown"
    stale = "  (PositionBook reads failing)" if view.get("pnl_stale") else ""
    if view.get("loss_floor") is not None:
        lines.append(f"pnl        {pnl}   peak {_money(view.get('peak_pnl'))}   loss floor {_money(view['loss_floor'])}"
                     f"   headroom {_money(view.get('headroom'))}   max loss {_money(view.get('max_loss'))}{stale}")
    else:
        lines.append(f"pnl        {pnl}   (no daily loss limit){stale}")
    if view.get("cooldown_until"):
        lines.append(f"cooldown   no entries until {view['cooldown_until']}")
    per_s, per_m = limits.get("max_entries_per_second") or "-", limits.get("max_entries_per_minute") or "-"
    lines.append(f"entries    {view.get('entries_last_second', 0)}/{per_s} last second, "
                 f"{view.get('entries_last_minute', 0)}/{per_m} last minute")
    lines.append(f"positions  {view.get('open_positions', 0)} open / {limits.get('max_open_positions') or 'no limit'}")
    for job in view.get("flatten") or []:
        scope = ", ".join(filter(None, [job.get("exchange"), job.get("strategy") and f"strategy {job['strategy']}"]))
        lines.append(f"flatten    {job.get('reason')}: {scope or 'whole account'}, round {job.get('rounds')}")
    shown = {k: v for k, v in limits.items() if k not in ("max_entries_per_second", "max_entries_per_minute")}
    lines.append("limits     " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    return lines


def _print_risk(view: dict, as_json: bool) -> None:
    if as_json:
        _out(json.dumps(view, indent=2, default=str))
    else:
        for line in format_risk(view):
            _out(line)


def cmd_risk(args) -> int:
    config = _config(args)
    try:
        if args.action == "status":
            view = _service_call(config, "GET", "/risk")
        elif args.action == "halt":
            view = _service_call(config, "POST", "/risk/halt", {})
            if args.flatten:
                view = _service_call(config, "POST", "/risk/flatten", {})
        elif args.action == "reduce":
            view = _service_call(config, "POST", "/risk/reduce", {})
        elif args.action == "stop-flatten":
            view = _service_call(config, "POST", "/risk/flatten/stop", {})
            if not args.json:
                stopped = view.get("flatten_stopped") or []
                _out(f"{len(stopped)} flatten job(s) stopped" if stopped else "no flatten was running")
        else:
            view = _service_call(config, "POST", "/risk/resume", {})
    except ServiceError as exc:
        _out(f"oms: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    _print_risk(view, args.json)
    if args.action == "resume" and view.get("state") != "ACTIVE":
        _out(f"oms: mode resumed, but entries stay blocked: {view.get('reason')}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_exit(args) -> int:
    """EXIT intents for strategy positions (POST /positions/exit), or with --flatten the risk flatten
    (cancel open orders and exit until the broker's PositionBook is flat)."""
    config = _config(args)
    if not (args.all or args.strategy or args.exchange or args.symbol):
        _out("oms: error: oms exit needs --all, --strategy NAME, --symbol TSYM or --exchange EXCH", file=sys.stderr)
        return EXIT_USAGE
    body = {}
    for key in ("strategy", "symbol"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.exchange:
        body["exchange"] = args.exchange.upper()
    if args.flatten:
        if args.symbol or args.qty:
            _out("oms: error: --flatten works on --all, --strategy or --exchange (no --symbol/--qty)", file=sys.stderr)
            return EXIT_USAGE
        try:
            view = _service_call(config, "POST", "/risk/flatten", body)
        except ServiceError as exc:
            _out(f"oms: {exc}", file=sys.stderr)
            return EXIT_PROBLEM
        if not args.json:
            _out("flatten started" if view.get("flatten_started")
                 else "a running flatten already covers this; it starts again from now")
        _print_risk(view, args.json)
        return EXIT_OK
    if args.qty:
        body["qty"] = args.qty
    if args.wait < 0:
        raise ConfigError("--wait must be 0 or more seconds")
    try:
        reply = _service_call(config, "POST", "/positions/exit", body)
    except ServiceError as exc:
        _out(f"oms: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    orders = reply.get("orders", [])
    if not args.json:
        for order in orders:
            _out(f"EXIT {order['tradingsymbol']}: {order['command_id']} {order['status']} {order['tag'] or ''}")
    if not args.wait:
        if args.json:
            _out(json.dumps(reply, indent=2))
        return EXIT_OK
    final = _wait_terminal(config, [o["command_id"] for o in orders], args.wait)
    if args.json:
        _out(json.dumps(dict(reply, outcomes=list(final.values())), indent=2, default=str))
    else:
        for cid, row in final.items():
            _out(describe_outcome(row, args.wait))
    # 1: an exit did not fill (failed, or still working at the broker): the position may still be there.
    return EXIT_OK if all(r.get("status") == "EXECUTED" for r in final.values()) else EXIT_PROBLEM


def _wait_terminal(config: Config, command_ids: list[str], wait_s: float) -> dict[str, dict]:
    """Poll GET /orders/{id} until every order is EXECUTED or FAILED, or wait_s has passed; the last rows."""
    last: dict[str, dict] = {cid: {"command_id": cid, "status": "UNKNOWN"} for cid in command_ids}
    deadline = time.monotonic() + wait_s
    pending = list(command_ids)
    while pending:
        for cid in list(pending):
            try:
                row = _service_call(config, "GET", f"/orders/{cid}")
            except ServiceError:
                continue  # a blip of the listener: ask again until the deadline
            last[cid] = row
            if row.get("status") in ("EXECUTED", "FAILED"):
                pending.remove(cid)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    return last


def describe_outcome(row: dict, wait_s: float) -> str:
    """One line: how an exit order ended (or that it had not ended within the wait)."""
    from runtime.system import failure_kind

    what = f"{row.get('command_id')} {row.get('side') or ''} {row.get('quantity') or ''} {row.get('symbol') or ''}"
    what = " ".join(what.split())
    status = row.get("status")
    if status == "EXECUTED":
        return f"filled     {what} @ {row.get('avg_price') or 0:.2f}"
    if status == "FAILED":
        part = f", {row['filled_qty']} filled" if row.get("filled_qty") else ""
        return f"{failure_kind(row.get('tag')):<10} {what}{part}: {row.get('tag') or ''}"
    part = f", {row['filled_qty']}/{row.get('quantity')} filled" if row.get("filled_qty") else ""
    return (f"open       {what}: still {status}{part} after {wait_s:g}s "
            f"(see `oms orders`; `oms cancel` to cancel it)")


def cmd_cancel(args) -> int:
    """Cancel our open orders at the broker (POST /orders/cancel)."""
    config = _config(args)
    if not (args.all or args.strategy or args.symbol):
        _out("usage: oms cancel --all | --strategy NAME | --symbol TSYM  (--all is needed to cancel every open "
             "order)", file=sys.stderr)
        return EXIT_USAGE
    body = {}
    for key in ("strategy", "symbol"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    try:
        reply = _service_call(config, "POST", "/orders/cancel", body)
    except ServiceError as exc:
        _out(f"oms: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    ids = reply.get("cancel_requested", [])
    _out(f"cancel requested for {len(ids)} order(s)" + (": " + " ".join(ids) if ids else ""))
    return EXIT_OK


def _table(headers: tuple[str, ...], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def format_positions(positions: list[dict], strategies: list[dict], now: datetime) -> list[str]:
    """GET /positions and GET /strategies as two tables, headed by the time in IST. Unknown prices show `-`."""
    out = [f"positions at {now.astimezone(IST):%Y-%m-%d %H:%M:%S} IST (realized: today's fills; "
           f"closed today: NET 0)"]
    if not positions:
        out.append("no position open or traded today")
    else:
        out += _table(("STRATEGY", "EXCH", "SYMBOL", "PRODUCT", "NET", "AVG", "LAST", "REALIZED", "UNREALIZED"),
                      [[str(p["strategy_name"]), str(p["exchange"]), str(p["symbol"]), str(p["product"]),
                        str(p["net_qty"]), _money(p.get("avg_price")), _money(p.get("last_price")),
                        _money(p.get("realized_pnl")), _money(p.get("unrealized_pnl"))] for p in positions],
                      right={4, 5, 6, 7, 8})
    if strategies:
        out.append("")
        out += _table(("STRATEGY", "REALIZED", "UNREALIZED", "OPEN", "ORDERS", "FILLS"),
                      [[str(t["strategy_name"]), _money(t.get("realized_pnl")), _money(t.get("unrealized_pnl")),
                        str(t.get("open_positions", 0)), str(t.get("orders", 0)), str(t.get("fills", 0))]
                       for t in strategies], right={1, 2, 3, 4, 5})
    return out


def cmd_positions(args) -> int:
    """Positions and P&L per strategy: from the running service (with last prices), else from the database."""
    config = _config(args)
    try:
        positions = _service_call(config, "GET", "/positions")
        strategies = _service_call(config, "GET", "/strategies")
        note = None
    except ServiceError as exc:
        from runtime.system import dashboard_reads as reads

        _open_db(config)
        positions, strategies = reads.position_rows(), reads.strategy_rows()
        note = f"oms: read from the database, last prices unknown: {exc}"
    if args.json:
        _out(json.dumps({"positions": positions, "strategies": strategies}, indent=2, default=str))
    else:
        for text in format_positions(positions, strategies, datetime.now(timezone.utc)):
            _out(text)
    if note:
        _out(note, file=sys.stderr)
    return EXIT_OK


def cmd_backup(args) -> int:
    """A consistent copy of the database with SQLite's online backup API: safe while `oms run` writes."""
    import sqlite3
    from datetime import datetime, timezone

    from storage import queries
    from storage.db import close_database, open_database

    config = _config(args)
    source = Path(config.service.data_dir) / "orders.db"
    if not source.exists():
        raise ConfigError(f"{source}: no database yet (has `oms run` been started with this data_dir?)")
    target = Path(args.path)
    if target.is_dir():
        target = target / f"orders-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.db"
    if target.exists() or Path(f"{target}-wal").exists():
        raise ConfigError(f"{target}: already exists; give a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent}: no such directory")
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target}: that is the live database")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, inside one read transaction: a snapshot of one moment,
            # while the service goes on writing (WAL).
            src.backup(dst, pages=-1)
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        _out(f"oms: backup failed: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        src.close()
    if check != "ok":
        partial.unlink(missing_ok=True)
        _out(f"oms: the copy failed its integrity check ({check}); nothing written", file=sys.stderr)
        return EXIT_PROBLEM
    partial.rename(target)
    db = open_database(target)
    try:
        counts = queries.counts_by_status()
    finally:
        close_database(db)
    _out(f"backed up {source} to {target}: {sum(counts.values())} order(s), "
         f"{target.stat().st_size / 1e6:.1f} MB")
    return EXIT_OK


def cmd_deploy(args) -> int:
    """Print a Caddyfile or a systemd unit for this config (nothing is installed or changed)."""
    import getpass

    from runtime import deploy

    if args.target == "caddy":
        config = _config(args)
        _out(deploy.caddyfile(config, args.domain, expose_operator=args.expose_operator,
                              tls_internal=args.tls_internal, https_port=args.https_port, http_port=args.http_port,
                              bind=args.bind, admin=args.admin).rstrip("\n"), flush=True)
        _out(f"oms: in config.toml [service]: {deploy.trusted_proxies_line(config)}", file=sys.stderr)
        return EXIT_OK
    workdir = Path(args.workdir or os.getcwd()).absolute()
    config_path = Path(args.config).absolute() if args.config else workdir / "config.toml"
    # The unit runs with the workdir's config.toml unless told otherwise: read that one (defaults if none yet).
    config = load_config(config_path) if args.config or config_path.exists() else config_from_dict({})
    _out(deploy.systemd_unit(config, config_path, user=args.user or getpass.getuser(), workdir=workdir,
                             env_file=args.env_file or deploy.DEFAULT_ENV_FILE).rstrip("\n"), flush=True)
    return EXIT_OK


def cmd_doctor(args) -> int:
    """Check the set-up: one line per check, exit 1 if one failed."""
    from loguru import logger

    from runtime import doctor

    logger.remove()  # the checks' own lines are the output; the clients' logs would only repeat them
    ok = True
    for check in doctor.run_checks(args.config):
        _out(doctor.format_check(check, sys.stdout), flush=True)
        ok = ok and check.status != doctor.FAIL
    return EXIT_OK if ok else EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oms", description="shoonya-oms: order-management service for Shoonya (NorenOMS)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p, default=None):
        p.add_argument("--config", default=default, help="path to config.toml (default ./config.toml)")
        return p

    run = with_config(sub.add_parser("run", help="run the service (one instance per data_dir)"))
    run.add_argument("--port", type=int, default=None, help="listener port (overrides service.port)")
    run.set_defaults(func=cmd_run)

    paper = with_config(sub.add_parser("paper", help="run the paper exchange alone (one instance per state)"))
    paper.add_argument("--host", default=None, help="address to listen on (default paper.host)")
    paper.add_argument("--port", type=int, default=None, help="port to listen on (default paper.port)")
    paper.add_argument("--seed", type=int, default=None, help="random-walk seed (default paper.seed)")
    paper.set_defaults(func=cmd_paper)

    orders = with_config(sub.add_parser("orders", help="print the order book"))
    orders.add_argument("--status", help="CREATED, SENT_TO_BROKER, PARTIAL, EXECUTED or FAILED")
    orders.add_argument("--strategy", help="only this strategy's orders")
    orders.add_argument("--symbol", help="only this trading symbol")
    orders.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default 100)")
    orders.add_argument("--json", action="store_true", help="print JSON instead of a table")
    orders.set_defaults(func=cmd_orders)

    verify = with_config(sub.add_parser("verify", help="counts by status; exit 1 if an order is stuck (non-terminal, "
                                                       "no broker confirmation)"))
    verify.add_argument("--stuck-after", type=float, default=None, help="seconds (default service.stuck_after_s)")
    verify.set_defaults(func=cmd_verify)

    tail = with_config(sub.add_parser("tail", help="print alert and order events readably"))
    tail.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new events; starts at the end unless -n is given")
    tail.add_argument("--command-id", help="only this order's events")
    tail.add_argument("--strategy", help="only this strategy's alerts and orders")
    tail.add_argument("--lines", "-n", type=int, default=None,
                      help="only the last N lines that pass the filters (default: all; with --follow: none)")
    tail.set_defaults(func=cmd_tail)

    bench = sub.add_parser("bench", help="latency and throughput benchmark (paper exchange + service, loopback)")
    bench.add_argument("--orders", type=int, default=2000, help="orders in the latency run (default 2000)")
    bench.add_argument("--rate", type=float, default=100.0, help="offered alerts/s in the latency run (default 100)")
    bench.add_argument("--burst", type=int, default=500, help="legs in the burst (default 500)")
    bench.add_argument("--watch", choices=("ws", "poll"), default=None,
                       help="measure with the WebSocket or with polling only (default: both)")
    bench.add_argument("--json", metavar="PATH", default=None, help="also write the figures as JSON to PATH")
    bench.add_argument("--soak", action="store_true", help="also run the soak (memory growth, recovery time)")
    bench.add_argument("--soak-orders", type=int, default=None, help="orders in the soak (default 100000)")
    bench.add_argument("--soak-rate", type=float, default=None,
                       help="alerts/s in the soak (default 70%% of the measured throughput)")
    bench.add_argument("--quick", action="store_true", help="a tiny run: short warm-ups, a one-step sweep")
    bench.add_argument("--dashboards", type=int, default=0, metavar="N",
                       help="N dashboard tabs open on the Orders page (polling it every second) during the "
                            "latency run")
    bench.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    bench.set_defaults(func=cmd_bench)

    risk = with_config(sub.add_parser("risk", help="the running service's risk state: status, halt, reduce, resume, "
                                                   "stop-flatten"))
    risk.add_argument("action", choices=("status", "halt", "reduce", "resume", "stop-flatten"),
                      help="status: show; halt: block entries; reduce: exits only; resume: allow entries again; "
                           "stop-flatten: end every running flatten")
    risk.add_argument("--flatten", action="store_true",
                      help="with halt: also cancel our open orders and exit every non-CNC position")
    risk.add_argument("--json", action="store_true", help="print the risk state as JSON")
    risk.set_defaults(func=cmd_risk)

    exit_ = with_config(sub.add_parser("exit", help="exit strategy positions through the pipeline"))
    exit_.add_argument("--all", action="store_true", help="every strategy position")
    exit_.add_argument("--strategy", help="only this strategy's positions")
    exit_.add_argument("--symbol", help="only this trading symbol")
    exit_.add_argument("--exchange", help="only positions on this exchange")
    exit_.add_argument("--qty", type=int, help="exit at most this quantity per position")
    exit_.add_argument("--flatten", action="store_true",
                       help="risk flatten instead: cancel open orders, exit non-CNC positions until the broker is "
                            "flat (with --all entries then stay blocked: REDUCING)")
    exit_.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                       help="wait this long for the exits to end and print how they ended (default 30; 0: "
                            "do not wait); exit 1 if one did not fill")
    exit_.add_argument("--json", action="store_true", help="print the answer (and the outcomes) as JSON")
    exit_.set_defaults(func=cmd_exit)

    cancel = with_config(sub.add_parser("cancel", help="cancel our open orders at the broker"))
    cancel.add_argument("--all", action="store_true", help="every open order of ours")
    cancel.add_argument("--strategy", help="only this strategy's open orders")
    cancel.add_argument("--symbol", help="only open orders in this trading symbol")
    cancel.set_defaults(func=cmd_cancel)

    positions = with_config(sub.add_parser("positions", help="positions and P&L per strategy (open or traded today)"))
    positions.add_argument("--json", action="store_true", help="print JSON instead of tables")
    positions.set_defaults(func=cmd_positions)

    backup = with_config(sub.add_parser("backup", help="a consistent copy of the database, safe while running"))
    backup.add_argument("path", help="the new file (or an existing directory: orders-<UTC time>.db in it)")
    backup.set_defaults(func=cmd_backup)

    operator = sub.add_parser("operator", help="operator credentials: hash-password makes a hash for "
                                               "[operator] password")
    operator.add_argument("action", choices=("hash-password",),
                          help="hash-password: read a password (no echo) and print its scrypt hash")
    operator.set_defaults(func=cmd_operator)

    deploy = sub.add_parser("deploy", help="print a Caddyfile or a systemd unit for this config")
    targets = deploy.add_subparsers(dest="target", required=True, parser_class=_Parser)
    caddy = with_config(targets.add_parser(
        "caddy", help="a Caddyfile: HTTPS on 443 for the domain, only the webhook passed on (prints the matching "
                      "trusted_proxies line on stderr)"))
    caddy.add_argument("--domain", required=True, help="the public host name, e.g. oms.example.com")
    caddy.add_argument("--expose-operator", action="store_true",
                       help="also pass on the operator surface (orders, risk, ...; it needs its Bearer token)")
    caddy.add_argument("--tls-internal", action="store_true",
                       help="Caddy's own CA instead of a public certificate (a rehearsal on one machine)")
    caddy.add_argument("--https-port", type=int, default=None, help="HTTPS port instead of 443")
    caddy.add_argument("--http-port", type=int, default=None, help="HTTP port instead of 80")
    caddy.add_argument("--bind", default=None, help="listen on this address only (default: all)")
    caddy.add_argument("--admin", default=None,
                       help="Caddy's admin endpoint: off, or a loopback address:port (default Caddy's own)")
    caddy.set_defaults(func=cmd_deploy)
    systemd = with_config(targets.add_parser("systemd", help="a systemd unit running `oms run`"))
    systemd.add_argument("--user", default=None, help="the user it runs as (default: you)")
    systemd.add_argument("--workdir", default=None,
                         help="its working directory, where a relative data_dir lives (default: here)")
    systemd.add_argument("--env-file", default=None, help="the 0600 file with the OMS_* secrets "
                                                          "(default /etc/shoonya-oms/oms.env)")
    systemd.set_defaults(func=cmd_deploy)

    doctor = with_config(sub.add_parser("doctor", help="check config, secrets, TOTP, clock, broker login, "
                                                       "WebSocket, ports, data dir, database, disk; exit 1 on a "
                                                       "problem"))
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _out(f"oms: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RefusedStart as exc:
        _out(f"oms: refused to start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
