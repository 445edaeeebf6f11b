"""The logger sidecar: receives one agent's log records, keeps them in rotating JSON-lines
files and serves them back (`godel-sidecar-logger`)."""
