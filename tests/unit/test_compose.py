"""compose.yaml parses and names every service that has a module in this checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli.stack import SERVICE_MODULES

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_compose_parses_and_commands_point_at_real_modules() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "nats" in services
    for name, spec in services.items():
        if name == "nats":
            continue
        if spec["command"][0] == "chameleon":  # a one-shot CLI job
            continue
        module = spec["command"][-1]
        assert module == SERVICE_MODULES[name], name
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
        assert spec["environment"]["NATS_URL"] == "nats://nats:4222"
