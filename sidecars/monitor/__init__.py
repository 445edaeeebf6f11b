"""The monitor sidecar: samples one agent's process tree, serves the samples and exports
them on its own /metrics (`godel-sidecar-monitor`)."""
