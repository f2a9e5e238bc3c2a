#!/usr/bin/env bash
# Tunnel benchmark: builds what it needs into a scratch directory, then runs bench.py,
# which prints a markdown table (paste it into benches/RESULTS.md with the date and notes).
#
#   benches/tunnel/run.sh            # 3 interleaved rounds of everything
#   BENCH_ROUNDS=5 BENCH_SECS=5 benches/tunnel/run.sh
#
# Builds: nodepass (release), np-loadgen (std only), splice-fwd from ../shared/tools, and
# rathole 0.5 via `cargo install` into the scratch dir (not --locked: its published lockfile
# pins a `time` crate that no longer compiles; built without TLS/noise features, tcp only).
# Nothing here is vendored or becomes a dependency. Set SKIP_RATHOLE=1 to leave it out.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SCRATCH="${BENCH_DIR:-/tmp/np-bench}"
mkdir -p "$SCRATCH"

echo "building nodepass (release)..." >&2
cargo build --release --manifest-path "$ROOT/Cargo.toml" --target-dir "$SCRATCH/target" -q
echo "building np-loadgen..." >&2
cargo build --release --manifest-path "$ROOT/benches/tunnel/loadgen/Cargo.toml" \
    --target-dir "$SCRATCH/loadgen" -q
SPLICE_SRC="${SPLICE_SRC:-$ROOT/../shared/tools/splice-fwd}"
echo "building splice-fwd..." >&2
cargo build --release --manifest-path "$SPLICE_SRC/Cargo.toml" --target-dir "$SCRATCH/splice" -q

RATHOLE_BIN=""
if [ -z "${SKIP_RATHOLE:-}" ]; then
    if [ ! -x "$SCRATCH/rathole/bin/rathole" ]; then
        echo "installing rathole 0.5 (takes a few minutes)..." >&2
        cargo install rathole --version 0.5.0 --root "$SCRATCH/rathole" \
            --no-default-features --features server,client -q
    fi
    RATHOLE_BIN="$SCRATCH/rathole/bin/rathole"
fi

export NODEPASS_BIN="$SCRATCH/target/release/nodepass"
export LOADGEN_BIN="$SCRATCH/loadgen/release/np-loadgen"
export SPLICE_BIN="$SCRATCH/splice/release/splice-fwd"
export RATHOLE_BIN
ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cores, $(uname -r); load before start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec python3 "$ROOT/benches/tunnel/bench.py"
