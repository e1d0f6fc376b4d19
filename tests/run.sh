#!/usr/bin/env bash
# The one test command (README "Set up"): installs what the tests need, then runs the gate:
# formatting, clippy, every Rust test (unit, property, integration against the real binary),
# the benchmark harness's quick mode (answers checked, times not), the Python client test
# (reflection + health, as an outside scheduler would) and the deploy tests (Dockerfile,
# Helm chart, compose, Prometheus rules and Grafana dashboard).
# A missing dependency that cannot be installed is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# each step prints the minutes and seconds since the start, so a CI log shows where the time goes
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "dependencies"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "error: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt \
  || { echo "error: could not install tests/python/requirements.txt from PyPI" >&2; exit 1; }

if ! command -v openssl >/dev/null 2>&1; then
  # the deploy tests make TLS certificates with it
  echo "openssl not found: installing it"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y openssl; } \
    || { echo "error: openssl is missing and could not be installed (apt-get install openssl)" >&2; exit 1; }
fi

step "etcd (the cluster tests start a real one)"
./cluster/install-etcd

step "promtool (the deploy tests check deploy/prometheus/ with it)"
./tests/install-promtool

step "cargo fmt --check"
cargo fmt --all -- --check

# Everything below builds in the release profile only, and the binary the later steps run is
# the one `cargo test` builds for the integration tests: clippy then shares the build scripts
# and proc macros of that build, and there is one build of the dependency tree, with the
# features the dev-dependencies add (a separate `cargo build --release` lacks them, so cargo
# rebuilds the tree and the crate for the tests). Before, a dev build with full debug info and
# a release build made a clean CI run take 36 minutes. The tests also run the code as it ships.
step "cargo clippy (release profile)"
cargo clippy --release --all-targets --locked -- -D warnings

step "cargo test --release (builds the binary the integration tests, the bench smoke and the Python tests run)"
# no backtrace: a failing test's panic message then ends its output, where a truncated CI log keeps it
RUST_BACKTRACE=0 cargo test --release --locked -- --test-threads 2
export DEPIN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/depin-analytics"
[ -x "$DEPIN_BIN" ] || { echo "error: cargo test did not leave the binary at $DEPIN_BIN" >&2; exit 1; }

step "bench --quick (smoke test: a crash or a wrong answer fails the run, a slow time does not)"
"$DEPIN_BIN" bench --quick
step "bench --quick --nodes 3 (etcd and three nodes; a fourth joins: handoffs, then every provider's job count is checked)"
"$DEPIN_BIN" bench --quick --nodes 3 --shards 8

step "python client (grpcio + reflection)"
.venv/bin/python tests/python/test_client.py "$DEPIN_BIN"

step "deploy: Helm chart, Dockerfile, compose, Prometheus rules, Grafana dashboard"
.venv/bin/python -m pytest -q tests/python/test_deploy.py

step "all passed"

