#!/bin/sh
# Bench set-up: installs the peer proxies (nginx, haproxy from Debian), cmake and valgrind (for
# `trellis-bench instructions`), builds the pingora baseline (its own workspace,
# benches/pingora-baseline) and the release binaries the
# suite runs (trellis, trellis-bench). Run once as root (or with sudo for apt-get); safe to rerun.
# Without it, `trellis-bench run` still works and says which peers it skipped.
set -eu
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends nginx haproxy cmake valgrind
    # Debian starts the packaged services; the benchmark runs its own instances on 127.0.0.6x.
    $SUDO systemctl disable --now nginx haproxy 2>/dev/null || true
    $SUDO service nginx stop 2>/dev/null || true
    $SUDO service haproxy stop 2>/dev/null || true
else
    echo "no apt-get: install nginx, haproxy and cmake yourself" >&2
fi

cargo build --release --manifest-path benches/pingora-baseline/Cargo.toml
cargo build --release -p trellis -p trellis-bench
echo "set-up done: cargo run --release -p trellis-bench -- run --short"
