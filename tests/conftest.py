"""Registers the project's pytest plugin, which holds every shared fixture."""

pytest_plugins = ["tests.plugin.fixtures"]
