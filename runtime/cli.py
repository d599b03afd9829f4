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

    from runtime.system import System

    config = _config(args)
    logger.remove()
    system = System(config, listen_port=args.port)
    try:
        system.start()
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
        return (f"{at} ORDER {data.get('command_id')} {data.get('strategy')} {data.get('symbol')} "
                f"{data.get('from_status') or '-'} -> {data.get('to_status')}{tag}{fill}")
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
    _out("oms bench: not implemented yet (tracked as issue 6)", file=sys.stderr)
    return EXIT_USAGE


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

    bench = with_config(sub.add_parser("bench", help="latency and throughput benchmark"))
    bench.set_defaults(func=cmd_bench)
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
