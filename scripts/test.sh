#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, end-to-end tests against real processes, and the
# browser tests (when Chromium and ChromeDriver are installed; required when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
