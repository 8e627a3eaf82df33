"""What stages may tell a tracker; the MLflow implementation lives in :mod:`moft.tracking`.

Stages log through this protocol so the library never imports MLflow; tests and the plain CLI use
:class:`NullTracker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(
        self, directory: Path, artifact_path: str | None = None, patterns: tuple[str, ...] = ("*",)
    ) -> None: ...

    def log_model(self, model_dir: Path, base_dir: Path, method: str, cfg: Any) -> None: ...


class NullTracker:
    """A tracker that records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(
        self, directory: Path, artifact_path: str | None = None, patterns: tuple[str, ...] = ("*",)
    ) -> None:
        pass

    def log_model(self, model_dir: Path, base_dir: Path, method: str, cfg: Any) -> None:
        pass
