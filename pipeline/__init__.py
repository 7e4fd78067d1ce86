"""facecurate: turn raw face photos into a training-ready multimodal face dataset."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facecurate")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
