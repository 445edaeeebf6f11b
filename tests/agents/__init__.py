"""Small handlers for tests and demos, run as ``--handler tests.agents.handlers:NAME``."""
