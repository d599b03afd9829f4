"""The paper exchange's state file: one JSON document, replaced atomically (temp file + fsync + os.replace).

A reader therefore sees either the previous complete state or the new one, never a torn write, even after a
kill -9 or a power cut in the middle of a save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class PaperStateError(Exception):
    """The state file exists but cannot be used: starting afresh would reuse order numbers, so refuse."""


def load_state(path: Path) -> dict | None:
    """The saved state, None when there is no file yet. PaperStateError for an unreadable or malformed file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PaperStateError(f"paper state file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise PaperStateError(f"paper state file {path} is not valid JSON ({exc}); move it away to start "
                              "afresh (order numbers would then start again)") from None
    if not isinstance(state, dict):
        raise PaperStateError(f"paper state file {path} does not hold a JSON object")
    return state


def save_state(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
