"""`oms deploy`: the texts that put the service on the internet safely (a Caddyfile, a systemd unit).

Plain functions of the Config: they print nothing and touch nothing, the CLI prints what they return.

TradingView delivers webhooks only to ports 80/443, with a 3 s timeout, and cannot send custom headers. So Caddy
terminates HTTPS on 443 (automatic certificates) and passes on only `POST /webhook` and `POST /webhook/*`; every
other path (the operator surface: orders, risk, diagnostics) is answered 404 by Caddy unless asked otherwise.
The service stays on loopback and believes X-Forwarded-For only from Caddy (`[service] trusted_proxies`).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

from runtime.config import SECRET_ENV, Config, ConfigError

# A hostname (or an IP address) for the site: no scheme, port, path, spaces or Caddyfile syntax.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}"
                       r"[A-Za-z0-9])?)*\.?$")
_ADMIN = re.compile(r"^(off|(localhost|127\.0\.0\.1|\[::1\]):\d{1,5})$")
DEFAULT_ENV_FILE = "/etc/shoonya-oms/oms.env"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_domain(domain: str) -> str:
    domain = (domain or "").strip()
    if not (_HOSTNAME.match(domain) or _is_address(domain)):
        raise ConfigError(f"--domain {domain!r}: expected a host name such as oms.example.com (no scheme, port "
                          f"or path)")
    return domain


def _port(value: int | None, what: str) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value}: expected a port from 1 to 65535")
    return value


def upstream(host: str, port: int, what: str) -> str:
    """host:port Caddy forwards to; a wildcard listen address is reached on loopback."""
    if port == 0:
        raise ConfigError(f"{what}.port is 0 (an ephemeral port): a proxy needs a fixed port; set {what}.port")
    host = host.strip() or "127.0.0.1"
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _upstream_host(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def trusted_proxies_line(config: Config) -> str:
    """The `[service]` line that makes the service believe X-Forwarded-For from this Caddy (and nobody else):
    Caddy connects to the service's address from that same address."""
    host = _upstream_host(upstream(config.service.host, config.service.port or 1, "service"))
    return f'trusted_proxies = ["{"127.0.0.1" if host == "localhost" else host}"]'


def caddyfile(config: Config, domain: str, *, expose_operator: bool = False, tls_internal: bool = False,
              https_port: int | None = None, http_port: int | None = None, bind: str | None = None,
              admin: str | None = None) -> str:
    """A Caddyfile for `domain` in front of the service of `config` (see the module docstring).

    tls_internal, https_port, http_port, bind, admin: for a rehearsal on one machine (and the tests): Caddy's own
    CA instead of Let's Encrypt, other ports than 443/80, listening on one address, the admin endpoint off or on
    a port of your choice (default: Caddy's, localhost:2019, which `systemctl reload caddy` uses)."""
    domain = check_domain(domain)
    _port(https_port, "--https-port")
    _port(http_port, "--http-port")
    if admin is not None and not _ADMIN.match(admin):
        raise ConfigError(f"--admin {admin!r}: expected off or a loopback address with a port "
                          f"(127.0.0.1:2019)")
    if bind is not None and not (_is_address(bind) or bind == "localhost"):
        raise ConfigError(f"--bind {bind!r}: expected an IP address")
    service = upstream(config.service.host, config.service.port, "service")
    operator = service
    if config.operator.port:
        operator = upstream(config.operator.host or config.service.host, config.operator.port, "operator")
    body_limit = config.service.max_body_bytes

    lines = [
        f"# Caddyfile for shoonya-oms, made by `oms deploy caddy --domain {domain}`.",
        "# Caddy terminates HTTPS and passes on only the webhook: POST /webhook and POST /webhook/<path_token>;",
        "# everything else" + (" goes to the operator surface, which needs its Bearer token."
                               if expose_operator else " (orders, positions, risk, diagnostics, health) is 404."),
        "# In TradingView use https://" + domain + "/webhook/<path_token> (or /webhook with secret_key in the body).",
        "#",
        "# Put this in config.toml, so that the service takes the client address from the X-Forwarded-For that",
        "# this Caddy sets, and believes it from nobody else:",
        "#   [service]",
        f"#   {trusted_proxies_line(config)}",
    ]
    if not _is_loopback(config.service.host.strip()):  # a wildcard too: it listens on every interface
        lines += ["#", f"# WARNING: service.host is {config.service.host!r}: anyone who reaches that address bypasses "
                       "Caddy;", "# set service.host = \"127.0.0.1\"."]
    options = []
    if admin is not None:
        options.append(f"\tadmin {admin}")
    if http_port is not None:
        options.append(f"\thttp_port {http_port}")
    if https_port is not None:
        options.append(f"\thttps_port {https_port}")
    if tls_internal:
        options.append("\tskip_install_trust # the internal CA stays in Caddy's data dir, not the system's")
    if options:
        lines += ["{", *options, "}", ""]
    site = [f"{domain} {{"]
    if bind is not None:
        site.append(f"\tbind {bind}")
    if tls_internal:
        site.append("\ttls internal")
    site += [
        "\t# No `log` directive: an access log would write the path token of /webhook/<path_token> to disk.",
        "\trequest_body {",
        f"\t\tmax_size {body_limit} # bytes, service.max_body_bytes",
        "\t}",
        "\t@webhook {",
        "\t\tmethod POST",
        "\t\tpath /webhook /webhook/*",
        "\t}",
        "\thandle @webhook {",
        "\t\t# Caddy replaces any X-Forwarded-For from the internet with the client's address (its default).",
        f"\t\treverse_proxy {service}",
        "\t}",
        "\thandle {",
    ]
    if expose_operator:
        site.append(f"\t\treverse_proxy {operator}")
    else:
        site.append("\t\trespond 404")
    site += ["\t}", "}"]
    return "\n".join(lines + site) + "\n"


def _unit_escape(text: str) -> str:
    """A value for a unit file: `%` is a specifier there."""
    return text.replace("%", "%%")


def _exec_word(text: str) -> str:
    text = _unit_escape(text)
    if re.search(r"[\s\"'\\;$]", text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def oms_executable() -> Path:
    """The installed `oms` beside this interpreter (the venv's bin dir; not resolved, the venv's python is a
    symlink)."""
    return Path(sys.executable).absolute().parent / "oms"


def secret_env_names() -> list[str]:
    names = list(SECRET_ENV)
    return names if "OMS_OPERATOR_TOKEN" in names else [*names, "OMS_OPERATOR_TOKEN"]


def systemd_unit(config: Config, config_path: str | Path, *, user: str, workdir: str | Path,
                 env_file: str = DEFAULT_ENV_FILE, oms: str | Path | None = None) -> str:
    """A systemd unit that runs `oms run --config <config_path>` in `workdir` as `user`."""
    workdir = Path(workdir).absolute()
    config_path = Path(config_path)
    config_path = config_path if config_path.is_absolute() else (workdir / config_path)
    oms = Path(oms) if oms else oms_executable()
    if not user or re.search(r"\s", user):
        raise ConfigError(f"--user {user!r}: expected a user name")
    if not env_file.startswith("/"):
        raise ConfigError(f"--env-file {env_file!r}: expected an absolute path")
    data_dir = Path(config.service.data_dir)
    data_dir = data_dir if data_dir.is_absolute() else workdir / data_dir
    # Longer than the service's own drain, so systemd never kills it while in-flight orders settle.
    stop_s = int(config.service.shutdown_drain_s) + 30
    names = secret_env_names()
    lines = [
        "# shoonya-oms as a systemd service, made by `oms deploy systemd`.",
        "# Install: save as /etc/systemd/system/shoonya-oms.service, then",
        "#   systemctl daemon-reload && systemctl enable --now shoonya-oms",
        "#",
        f"# Secrets come from {env_file}, never from this unit or config.toml. Make it readable by root only",
        "# (systemd reads it before dropping to the user):",
        f"#   install -d -m 700 {Path(env_file).parent} && install -m 600 /dev/null {env_file}",
        "# and put in it one NAME=value line for each secret you use:",
        *(f"#   {name}=..." for name in names),
        "# (without OMS_OPERATOR_TOKEN the token is generated at the first start into <data_dir>/operator_token).",
        "#",
        "# Exit code 2 is a configuration mistake or a refused start (a second instance, a rejected login, a busy",
        "# port): restarting cannot fix it, so systemd does not retry it; `journalctl -u shoonya-oms` shows the line.",
        "",
        "[Unit]",
        "Description=shoonya-oms order-management service (Shoonya / NorenOMS)",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"WorkingDirectory={_unit_escape(str(workdir))}",
        f"# The data dir (database, logs, lock, operator token) is {_unit_escape(str(data_dir))}",
        f"EnvironmentFile={_unit_escape(env_file)}",
        f"ExecStart={_exec_word(str(oms))} run --config {_exec_word(str(config_path))}",
        "Restart=on-failure",
        "RestartSec=5",
        "RestartPreventExitStatus=2",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_s}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
