"""compose.yaml parses, names every service that has a module in this checkout, and runs with
authorization on: the server loads the config ``chameleon auth init`` wrote, and every service
connects as its own user, with the password from the mounted keys file.
(tests/service/test_deploy_config.py runs that config and those credentials without Docker.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.stack import SERVICE_MODULES
from shared.auth import ADMIN_USER, ENV_KEYS_FILE, ENV_USER, SERVICE_ROLES

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_compose_parses_and_commands_point_at_real_modules() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "nats" in services
    for name, spec in services.items():
        if name in ("nats", "auth-init"):
            continue
        if spec["command"][0] == "chameleon" or spec.get("entrypoint") == ["chameleon"]:  # CLI jobs
            continue
        module = spec["command"][-1]
        assert module == SERVICE_MODULES[name], name
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
        assert spec["environment"]["NATS_URL"] == "nats://nats:4222"
    missing = {n for n, m in SERVICE_MODULES.items() if n != "passthrough"} - set(services)
    assert not missing, f"services not in compose.yaml: {missing}"


def test_compose_runs_with_authorization() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    init = services["auth-init"]["command"]
    assert init[:3] == ["chameleon", "auth", "init"] and init[init.index("--out") + 1] == "/secrets"
    nats = services["nats"]
    assert nats["command"] == ["-c", "/secrets/nats.conf"]
    assert nats["depends_on"]["auth-init"]["condition"] == "service_completed_successfully"
    for name, spec in services.items():
        if name in ("nats", "auth-init"):
            continue
        env = spec["environment"]
        assert env[ENV_KEYS_FILE] == "/secrets/auth-keys.json", name
        assert "secrets:/secrets:ro" in spec["volumes"], name
        assert "CHAMELEON_NATS_PASSWORD" not in env, name  # passwords come from the file only
        if name == "web":
            assert ENV_USER not in env  # it mints tokens, and never connects to NATS
            continue
        assert env[ENV_USER] in (*SERVICE_ROLES, ADMIN_USER), name
        if name in SERVICE_ROLES:
            assert env[ENV_USER] == name, name  # each service as its own user
