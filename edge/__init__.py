"""The gateway daemon: config, supervisor, rules, annunciator, uplink and the ``edge`` CLI."""

# First, before anything imports asyncio or hashlib: OpenSSL stays out until TLS is spoken.
from edge import openssl

openssl.defer()

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

try:
    __version__ = version("city-safety-edge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
