"""The operator token: `[operator] token` (or OMS_OPERATOR_TOKEN), else one generated at the first start into
`<data_dir>/operator_token`, readable by its owner only. The `oms` commands read it from the same place."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "operator_token"


def token_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / TOKEN_FILE


def operator_token(config, *, create: bool = False) -> str:
    """The token the operator surface accepts ("" when none exists yet and `create` is False)."""
    if config.operator.token:
        return config.operator.token
    path = token_path(config.service.data_dir)
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not create:
            return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)  # as actors.access.new_token; runtime/ does not import actors/
    # O_EXCL: two starts racing never write two different tokens; 0600: only the owner reads it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token
