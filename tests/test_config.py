"""Tests of runtime/config.py: defaults, errors (one line, file + key, never a secret), OMS_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "oms.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(raw: dict, source: str = "cfg/oms.toml", environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source=source, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message and message.strip()
    return message


# ---- defaults ---------------------------------------------------------------------------------------

def test_defaults_match_the_design():
    c = config_from_dict({}, environ={})
    assert (c.service.host, c.service.port, c.service.data_dir, c.service.client_id) == (
        "127.0.0.1", 8080, "data", "paper")
    assert c.webhook.secret_key == ""
    assert (c.broker.mode, c.broker.auth) == ("paper", "quickauth")
    assert (c.paper.host, c.paper.port, c.paper.fill_delay_ms, c.paper.reject_symbols) == (
        "127.0.0.1", 9090, 50, [])
    assert (c.telegram.token, c.telegram.chat_id, c.telegram.api_url) == ("", "", "https://api.telegram.org")
    assert c.data_path == Path("data")


def test_every_key_is_optional_per_section():
    c = config_from_dict({"service": {"port": 9000}, "broker": {}, "paper": {"reject_symbols": ["X-EQ"]}},
                         environ={})
    assert c.service.port == 9000 and c.service.host == "127.0.0.1"
    assert c.paper.reject_symbols == ["X-EQ"] and c.paper.port == 9090


def test_missing_default_file_means_all_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load_config(None, environ={})
    assert c.service.port == 8080 and c.broker.mode == "paper"


def test_default_file_in_the_working_directory_is_read(tmp_path, monkeypatch):
    write(tmp_path, "[service]\nport = 8181\n", name="config.toml")
    monkeypatch.chdir(tmp_path)
    assert load_config(None, environ={}).service.port == 8181


def test_explicit_file_is_read(tmp_path):
    path = write(tmp_path, '[service]\nport = 8099\nclient_id = "FA1234"\n[broker]\nmode = "shoonya"\n')
    c = load_config(path, environ={})
    assert (c.service.port, c.service.client_id, c.broker.mode) == (8099, "FA1234", "shoonya")


def test_shipped_config_runs_paper_without_credentials():
    c = load_config(REPO / "config.toml", environ={})
    assert c.broker.mode == "paper"
    assert c.broker.password == "" and c.broker.totp_secret == "" and c.telegram.token == ""


# ---- errors -----------------------------------------------------------------------------------------

def test_missing_explicit_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "[service]\nprot = 8080\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message and "prot" in message and "\n" not in message


def test_unknown_section_names_it():
    message = error_of({"servcie": {"port": 1}})
    assert "cfg/oms.toml" in message and "servcie" in message


def test_wrong_type_names_key_and_expectation():
    message = error_of({"service": {"port": "eighty"}})
    assert "cfg/oms.toml" in message and "service.port" in message and "integer" in message


def test_wrong_enum_names_key_and_choices():
    message = error_of({"broker": {"mode": "live"}})
    assert "broker.mode" in message and "paper" in message and "shoonya" in message


def test_out_of_range_port_is_an_error():
    assert "service.port" in error_of({"service": {"port": 70000}})


def test_invalid_toml_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, "[service\nport = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("raw,secret", [
    ({"webhook": {"secret_key": 98765432}}, "98765432"),
    ({"broker": {"password": ["hunter2-pw"]}}, "hunter2-pw"),
    ({"broker": {"totp_secret": 123456789}}, "123456789"),
    ({"broker": {"api_secret": {"v": "apisecret-xyz"}}}, "apisecret-xyz"),
    ({"telegram": {"token": 4242424242}}, "4242424242"),
])
def test_secret_values_never_appear_in_errors(raw, secret):
    assert secret not in error_of(raw)


def test_secret_in_a_file_never_appears_in_errors(tmp_path):
    path = write(tmp_path, '[webhook]\nsecret_key = "tops3cret-value"\nbogus = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "tops3cret-value" not in str(info.value) and "bogus" in str(info.value)


def test_secret_from_environment_never_appears_in_errors():
    message = error_of({"service": {"port": "x"}}, environ={"OMS_WEBHOOK_SECRET": "env-s3cret-99"})
    assert "env-s3cret-99" not in message


def test_paper_user_password_never_appears_in_errors():
    assert "918273" not in error_of({"paper": {"users": {"PAPER1": 918273}}})


def test_secret_given_as_a_section_value_never_appears_in_errors():
    assert "123456:AAbbCCdd" not in error_of({"telegram": "123456:AAbbCCdd"})


def test_boolean_for_an_integer_key_is_a_wrong_type():
    message = error_of({"service": {"port": True}})
    assert "service.port" in message and "integer" in message


# ---- OMS_* overrides --------------------------------------------------------------------------------

ENV = {
    "OMS_WEBHOOK_SECRET": ("webhook", "secret_key"),
    "OMS_BROKER_PASSWORD": ("broker", "password"),
    "OMS_BROKER_TOTP_SECRET": ("broker", "totp_secret"),
    "OMS_BROKER_API_SECRET": ("broker", "api_secret"),
    "OMS_BROKER_AUTH_CODE": ("broker", "auth_code"),
    "OMS_TELEGRAM_TOKEN": ("telegram", "token"),
}


@pytest.mark.parametrize("var,where", sorted(ENV.items()))
def test_environment_overrides_a_secret_in_the_file(var, where):
    section, key = where
    c = config_from_dict({section: {key: "from-file"}}, environ={var: "from-env"})
    assert getattr(getattr(c, section), key) == "from-env"


@pytest.mark.parametrize("var,where", sorted(ENV.items()))
def test_environment_sets_a_secret_absent_from_the_file(var, where):
    section, key = where
    c = config_from_dict({}, environ={var: "from-env"})
    assert getattr(getattr(c, section), key) == "from-env"


def test_empty_environment_value_does_not_override():
    c = config_from_dict({"webhook": {"secret_key": "from-file"}}, environ={"OMS_WEBHOOK_SECRET": ""})
    assert c.webhook.secret_key == "from-file"


def test_environ_argument_isolates_from_process_environment(monkeypatch):
    monkeypatch.setenv("OMS_WEBHOOK_SECRET", "process-env")
    assert config_from_dict({}, environ={}).webhook.secret_key == ""
    assert config_from_dict({}).webhook.secret_key == "process-env"


def test_load_config_applies_environment(tmp_path):
    path = write(tmp_path, '[webhook]\nsecret_key = "file"\n[telegram]\nchat_id = "42"\n')
    c = load_config(path, environ={"OMS_WEBHOOK_SECRET": "env", "OMS_TELEGRAM_TOKEN": "tok"})
    assert (c.webhook.secret_key, c.telegram.token, c.telegram.chat_id) == ("env", "tok", "42")


def test_config_is_frozen():
    c = config_from_dict({}, environ={})
    with pytest.raises(ValidationError):
        c.service.port = 1  # type: ignore[misc]
