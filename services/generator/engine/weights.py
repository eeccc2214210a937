"""Building modules (random init) is separate from loading weights (safetensors + validation).

A checkpoint stores its ``EngineConfig`` as JSON metadata; loading refuses a checkpoint whose sizes
differ from the config the modules were built with, naming the fields, instead of failing later
with an opaque shape error deep inside ``load_state_dict``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .autoencoder import CausalVideoAutoencoder
from .config import EngineConfig
from .transformer import CausalVideoDiT

_PREFIXES = ("transformer.", "autoencoder.")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the config or modules it is being loaded into."""


def build_modules(
    config: EngineConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
) -> tuple[CausalVideoDiT, CausalVideoAutoencoder]:
    """Randomly initialised transformer and autoencoder, created directly on ``device``.

    Creating on the device avoids a host copy of a multi-GB paper-sized model; the seed makes the
    random-weight benchmark and tests reproducible.
    """
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        transformer = CausalVideoDiT(config)
        autoencoder = CausalVideoAutoencoder(config)
    return transformer.to(dtype).eval(), autoencoder.to(dtype).eval()


def save_weights(
    path: str | Path, config: EngineConfig, transformer: nn.Module, autoencoder: nn.Module
) -> None:
    tensors = {f"transformer.{k}": v.detach().contiguous().cpu() for k, v in transformer.state_dict().items()}
    tensors.update(
        {f"autoencoder.{k}": v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    )
    save_file(tensors, str(path), metadata={"engine_config": json.dumps(config.to_dict())})


def read_config(path: str | Path) -> EngineConfig:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "engine_config" not in metadata:
        raise WeightsMismatchError(f"{path}: no engine_config metadata; not an engine checkpoint")
    return EngineConfig.from_dict(json.loads(metadata["engine_config"]))


def load_weights(
    path: str | Path, config: EngineConfig, transformer: nn.Module, autoencoder: nn.Module
) -> None:
    """Load a checkpoint into already-built modules after checking sizes, keys and shapes."""
    stored = read_config(path)
    diffs = config.size_differences(stored)
    if diffs:
        detail = ", ".join(
            f"{k}: expected {mine}, checkpoint has {theirs}" for k, (mine, theirs) in sorted(diffs.items())
        )
        raise WeightsMismatchError(
            f"{path} was saved for config {stored.name!r}, which differs from {config.name!r}: {detail}"
        )
    targets = {"transformer.": transformer, "autoencoder.": autoencoder}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for prefix, module in targets.items():
            own = module.state_dict()
            wanted = {prefix + k for k in own}
            present = {k for k in keys if k.startswith(prefix)}
            missing, unexpected = sorted(wanted - present), sorted(present - wanted)
            if missing or unexpected:
                raise WeightsMismatchError(
                    f"{path}: {prefix[:-1]} missing {missing[:5]} unexpected {unexpected[:5]}"
                )
            loaded = {}
            for name, param in own.items():
                tensor = f.get_tensor(prefix + name)
                if tensor.shape != param.shape:
                    raise WeightsMismatchError(
                        f"{path}: {prefix}{name} has shape {tuple(tensor.shape)}, "
                        f"model expects {tuple(param.shape)}"
                    )
                loaded[name] = tensor.to(device=param.device, dtype=param.dtype)
            module.load_state_dict(loaded, strict=True)
    unknown = sorted(k for k in keys if not k.startswith(_PREFIXES))
    if unknown:
        raise WeightsMismatchError(f"{path}: unexpected tensors {unknown[:5]}")
