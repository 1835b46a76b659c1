"""The data tests live in test_data_*.py; this module keeps `write_video`, which test_engine.py imports."""

from conftest import write_count_video as write_video

__all__ = ["write_video"]
