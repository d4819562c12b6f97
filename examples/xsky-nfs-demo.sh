#!/bin/sh
# xsky-nfs demo against the XMS emulator: create 5Gi, expand to 10Gi, show
# the quota tree's size on the array before and after. Run from anywhere.
set -eu
cd "$(dirname "$0")/.."
cargo build -q --release --target wasm32-wasip2 -p xsky-nfs
cargo build -q -p wasmcsi
exec cargo run -q -p wasmcsi --example xsky_demo
