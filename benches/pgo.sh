#!/usr/bin/env bash
# Builds fhirgate with profile-guided optimisation (PGO) into target/pgo/fhirgate:
#
#   bash benches/pgo.sh
#
# 1. an instrumented release build (`-Cprofile-generate`) counts which branches and calls
#    the gateway takes;
# 2. it serves the training load of `benches/e2e.sh --train` (a TLS nginx destination,
#    h2load and curl from Debian's packages; both upstream protocols, small and large
#    exchanges, errors, new connections, streams) and writes its counts when it stops;
# 3. `llvm-profdata` (rustup's llvm-tools, installed when missing) merges the counts, and
#    the release build uses them (`-Cprofile-use`) to lay out hot code together and inline
#    where it pays.
#
# The code is the same as in a plain `cargo build --release`; only the compiler's choices
# differ. The container image ships this build, and benches/e2e.sh measures it.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[ -x "$profdata" ] || rustup component add llvm-tools >/dev/null
# The counts' format follows the compiler's LLVM, so the merge uses the same toolchain's.
[ -x "$profdata" ] || { echo "llvm-profdata not found at $profdata" >&2; exit 1; }

out=$PWD/target/pgo
counts=$out/counts
echo "pgo: instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$counts" CARGO_TARGET_DIR=$out/instrumented \
  cargo build --release --locked -q --bin fhirgate
rm -rf "$counts"   # earlier runs' and the build scripts' (they ran instrumented too)

echo "pgo: training load" >&2
FHIRGATE=$out/instrumented/release/fhirgate bash benches/e2e.sh --train
"$profdata" merge -o "$out/fhirgate.profdata" "$counts"

echo "pgo: optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/fhirgate.profdata" CARGO_TARGET_DIR=$out/optimised \
  cargo build --release --locked -q --bin fhirgate
cp "$out/optimised/release/fhirgate" "$out/fhirgate"
echo "pgo: built $out/fhirgate" >&2
