"""Registers the shared fixtures; the fixtures themselves live in ``tests/fixtures``."""

pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.cli", "tests.fixtures.hygiene"]
