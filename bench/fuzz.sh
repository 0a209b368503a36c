#!/usr/bin/env bash
# Property-based fuzzing of what hostile inputs reach (issue 9): the policy parser and
# L7 path rules (policy/tests/prop.rs), the DNS parser, the strict HTTP head check
# against hyper, host-name normalisation (proxy/tests/prop.rs), and the layer unpacker
# (images/tests/prop.rs). Release build; no panic, no hang, properties hold.
# CASES (default 150000) cases per parser property (8 of them), UNPACK_CASES (default 20000) for
# the unpacker, which writes files per case: 8 x 150000 + 20000 = 1.22 M inputs.
# Each crate's run has a watchdog (LIMIT seconds, default 1800): a hang fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${CASES:-150000}
unpack_cases=${UNPACK_CASES:-20000}
limit=${LIMIT:-1800}
cargo test --release -p openshell-policy -p openshell-proxy -p openshell-images --test prop --no-run -q
total=0
run() {
  local crate=$1 n=$2 tests=$3
  local start=$(date +%s)
  echo "== $crate: $n cases x $tests properties"
  PROPTEST_CASES=$n timeout "$limit" cargo test --release -q -p "$crate" --test prop -- --test-threads 2 \
    || { echo "FAILED or hung: $crate (exit $?)"; exit 1; }
  echo "   $((n * tests)) inputs in $(( $(date +%s) - start )) s"
  total=$((total + n * tests))
}
run openshell-policy "$cases" 4
run openshell-proxy "$cases" 4
run openshell-images "$unpack_cases" 1
echo "fuzz: $total generated inputs, no failure"
