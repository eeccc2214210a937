"""Docs stay true: every setting a service reads is documented in docs/configuration.md."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest

import services
from runtime.settings import BaseSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _settings_classes() -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = [BaseSettings]
    for info in pkgutil.iter_modules(services.__path__):
        try:
            mod = importlib.import_module(f"services.{info.name}.settings")
        except ModuleNotFoundError:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and dataclasses.is_dataclass(obj):
                found.append(obj)
    return found


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"{cls.__name__}: {var}"
        for cls in _settings_classes()
        for var, _, _ in cls.env_doc()
        if var not in doc
    ]
    assert not missing, f"undocumented settings: {missing}"
