"""The risk commands act on the account; the listener usually faces the internet, so they need the secret."""

import requests

from conftest import SECRET


def test_risk_commands_without_the_secret_are_refused_and_change_nothing(make_system):
    system = make_system()
    for path in ("/risk/halt", "/risk/reduce", "/risk/resume", "/risk/flatten"):
        reply = requests.post(f"{system.url}{path}", json={"secret_key": "wrong"}, timeout=5)
        assert reply.status_code == 401, path
        assert requests.post(f"{system.url}{path}", timeout=5).status_code == 401, path
    assert requests.get(f"{system.url}/risk", timeout=5).json()["state"] == "ACTIVE"
    reply = requests.post(f"{system.url}/risk/halt", json={"secret_key": SECRET}, timeout=5)
    assert reply.status_code == 200 and reply.json()["state"] == "HALTED"
