"""Processes that run beside each agent: the logger sidecar and the monitor sidecar."""
