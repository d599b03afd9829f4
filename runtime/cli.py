"""The `oms` command. Exit codes: 0 ok, 1 `verify` found a problem, 2 usage or configuration error."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from runtime.config import Config, ConfigError, load_config

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


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

    path = Path(config.service.data_dir) / "orders.db"
    if not path.exists():
        raise ConfigError(f"{path}: no database yet (has `oms run` been started with this data_dir?)")
    return open_database(path, synchronous=config.service.db_synchronous)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def cmd_run(args) -> int:
    from loguru import logger

    from runtime.system import StartRefused, System

    config = _config(args)
    logger.remove()
    system = System(config, listen_port=args.port)
    try:
        system.start()
    except StartRefused as exc:  # e.g. the broker rejects the credentials: the service closes, then says why
        system.stop()
        _out(f"oms: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a start-up failure must be one readable line, exit 2
        logger.error("start-up failed: {}", exc)
        system.stop()
        return EXIT_USAGE
    try:
        _wait_for_signal()
    finally:
        system.stop()
    return EXIT_OK


def cmd_paper(args) -> int:
    from loguru import logger

    from runtime.paper import PaperExchange

    config = load_config(args.config) if args.config else load_config()
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss.SSS} {level: <7} {message}")
    exchange = PaperExchange(config.paper, host=args.host, port=args.port, seed=args.seed)
    exchange.serve_forever()
    return EXIT_OK


def cmd_orders(args) -> int:
    from storage import queries

    config = _config(args)
    _open_db(config)
    rows = queries.list_orders(args.status, args.strategy, args.symbol, args.limit)
    if args.json:
        _out(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    columns = ("created_at", "command_id", "strategy_name", "execution_type", "symbol", "side", "quantity",
               "status", "filled_qty", "avg_price", "broker_order_id", "tag")
    table = [[("" if r.get(c) is None else str(r.get(c)))[:40] for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    _out("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for row in table:
        _out("  ".join(v.ljust(w) for v, w in zip(row, widths)))
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
        _out(f"{len(stuck)} order(s) stuck non-terminal for more than {threshold:g}s:")
        for o in stuck:
            _out(f"  {o['command_id']}  {o['strategy_name']}  {o['symbol']}  {o['status']}  "
                  f"broker_id={o['broker_order_id'] or '-'}  updated_at={o['updated_at']}")
        return EXIT_PROBLEM
    _out(f"no order stuck for more than {threshold:g}s")
    return EXIT_OK


def format_event_line(data: dict) -> str:
    at = str(data.get("at", ""))[11:23]
    event = data.get("event", "")
    if event == "order":
        tag = f" [{data['tag']}]" if data.get("tag") else ""
        fill = f" filled={data.get('filled_qty')}@{data.get('avg_price')}" if data.get("filled_qty") else ""
        moved = data.get("from_status") != data.get("to_status")
        what = (f"{data.get('from_status') or '-'} -> {data.get('to_status')}" if moved
                else f"{data.get('to_status')} broker_id={data.get('broker_order_id')}")
        return f"{at} ORDER {data.get('command_id')} {data.get('strategy')} {data.get('symbol')} {what}{tag}{fill}"
    if event == "alert":
        return (f"{at} ALERT {data.get('alert_id') or '-'} {data.get('strategy') or ''} {data.get('outcome')} "
                f"({data.get('http_status')})")
    return f"{at} {event.upper() or data.get('level', '')} {data.get('message', '')}"


def _matches(data: dict, args) -> bool:
    if args.command_id and data.get("command_id") != args.command_id:
        return False
    if args.strategy and data.get("strategy") != args.strategy:
        return False
    return True


def cmd_tail(args) -> int:
    config = _config(args)
    path = Path(config.service.data_dir) / "logs" / "events.jsonl"
    if not path.exists() and not args.follow:
        raise ConfigError(f"{path}: no event log yet")
    lines = 0

    def emit(raw: str) -> None:
        nonlocal lines
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return
        if _matches(data, args):
            _out(format_event_line(data), flush=True)
            lines += 1

    while not path.exists():
        time.sleep(0.2)
    with path.open(encoding="utf-8") as fh:
        history = fh.readlines()
        for raw in history[-args.lines:] if args.lines else history:
            emit(raw)
        if not args.follow:
            return EXIT_OK
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        inode = path.stat().st_ino
        while not stop.is_set():
            raw = fh.readline()
            if raw:
                emit(raw)
                continue
            if path.exists() and path.stat().st_ino != inode:  # rotated: follow the new file
                fh.close()
                fh = path.open(encoding="utf-8")
                inode = path.stat().st_ino
                continue
            stop.wait(0.2)
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
                      soak=args.soak, quick=args.quick, keep=args.keep, soak_rate=args.soak_rate)
    if args.soak_orders is not None:
        options.soak_orders = args.soak_orders
    return run_bench(options)


class ServiceError(Exception):
    """The running service could not be reached or refused the request (exit 1)."""


def _service_url(config: Config) -> str:
    host = config.service.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{config.service.port}"


def _service_call(config: Config, method: str, path: str, body: dict | None = None) -> dict:
    import requests

    url = _service_url(config) + path
    try:
        reply = requests.request(method, url, json=body, timeout=20)
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
            view = _service_call(config, "POST", "/risk/halt", {"secret_key": config.webhook.secret_key})
            if args.flatten:
                view = _service_call(config, "POST", "/risk/flatten", {"secret_key": config.webhook.secret_key})
        elif args.action == "reduce":
            view = _service_call(config, "POST", "/risk/reduce", {"secret_key": config.webhook.secret_key})
        else:
            view = _service_call(config, "POST", "/risk/resume", {"secret_key": config.webhook.secret_key})
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
    body = {"secret_key": config.webhook.secret_key}
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
            _out("flatten started" if view.get("flatten_started") else "a running flatten already covers this")
        _print_risk(view, args.json)
        return EXIT_OK
    if args.qty:
        body["qty"] = args.qty
    try:
        reply = _service_call(config, "POST", "/positions/exit", body)
    except ServiceError as exc:
        _out(f"oms: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        _out(json.dumps(reply, indent=2))
    else:
        for order in reply.get("orders", []):
            _out(f"EXIT {order['tradingsymbol']}: {order['command_id']} {order['status']} {order['tag'] or ''}")
    return EXIT_OK


def cmd_cancel(args) -> int:
    """Cancel our open orders at the broker (POST /orders/cancel)."""
    config = _config(args)
    body = {"secret_key": config.webhook.secret_key}
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oms", description="shoonya-oms: order-management service for Shoonya (NorenOMS)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p, default=None):
        p.add_argument("--config", default=default, help="path to config.toml (default ./config.toml)")
        return p

    run = with_config(sub.add_parser("run", help="run the service"))
    run.add_argument("--port", type=int, default=None, help="listener port (overrides service.port)")
    run.set_defaults(func=cmd_run)

    paper = with_config(sub.add_parser("paper", help="run the paper exchange alone"))
    paper.add_argument("--host", default=None)
    paper.add_argument("--port", type=int, default=None)
    paper.add_argument("--seed", type=int, default=None)
    paper.set_defaults(func=cmd_paper)

    orders = with_config(sub.add_parser("orders", help="print the order book"))
    orders.add_argument("--status")
    orders.add_argument("--strategy")
    orders.add_argument("--symbol")
    orders.add_argument("--limit", type=int, default=100)
    orders.add_argument("--json", action="store_true")
    orders.set_defaults(func=cmd_orders)

    verify = with_config(sub.add_parser("verify", help="counts by status; exit 1 if an order is stuck"))
    verify.add_argument("--stuck-after", type=float, default=None, help="seconds (default service.stuck_after_s)")
    verify.set_defaults(func=cmd_verify)

    tail = with_config(sub.add_parser("tail", help="print alert and order events readably"))
    tail.add_argument("--follow", "-f", action="store_true")
    tail.add_argument("--command-id")
    tail.add_argument("--strategy")
    tail.add_argument("--lines", "-n", type=int, default=0, help="only the last N lines of history")
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
    bench.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    bench.set_defaults(func=cmd_bench)

    risk = with_config(sub.add_parser("risk", help="the running service's risk state: status, halt, reduce, resume"))
    risk.add_argument("action", choices=("status", "halt", "reduce", "resume"))
    risk.add_argument("--flatten", action="store_true",
                      help="with halt: also cancel our open orders and exit every non-CNC position")
    risk.add_argument("--json", action="store_true")
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
    exit_.add_argument("--json", action="store_true")
    exit_.set_defaults(func=cmd_exit)

    cancel = with_config(sub.add_parser("cancel", help="cancel our open orders at the broker"))
    cancel.add_argument("--strategy")
    cancel.add_argument("--symbol")
    cancel.set_defaults(func=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        _out(f"oms: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
