"""Pure-torch generation engine: causal video student, segmented KV cache, rescheduling.

Imports neither the bus nor asyncio; the generator service wraps ``Engine``/``StudentStream``.
"""

from .config import CONFIGS, PAPER, TINY, EngineConfig, get_config
from .kv_cache import CacheLayout, KVBatch, KVCache
from .pool import AtCapacity, CachePool
from .session import Engine, StudentStream
from .weights import WeightsMismatchError, build_modules, load_weights, save_weights

__all__ = [
    "CONFIGS",
    "PAPER",
    "TINY",
    "AtCapacity",
    "CacheLayout",
    "CachePool",
    "Engine",
    "EngineConfig",
    "KVBatch",
    "KVCache",
    "StudentStream",
    "WeightsMismatchError",
    "build_modules",
    "get_config",
    "load_weights",
    "save_weights",
]
