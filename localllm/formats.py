"""What kind of model a path holds, told by its files alone (no engine imported)."""

from __future__ import annotations

from pathlib import Path


def is_checkpoint(path: Path) -> bool:
    """A folder with a config.json and safetensors weights: what the transformers engine loads."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))
