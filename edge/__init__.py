"""The gateway daemon: config, supervisor, rules, annunciator, uplink and the ``edge`` CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("city-safety-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
