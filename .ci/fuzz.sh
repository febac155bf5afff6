#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for TERN_FUZZ_SECONDS (default 15) seconds each and
# fails if any of them finds a crash (a panic, a failed round trip, an ASan report, an input
# over the RSS limit or one that hangs). Crashing inputs are left in fuzz/artifacts/<target>/;
# `cargo fuzz run <target> <file>` in fuzz/ replays one.
#
# cargo fuzz builds with nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${TERN_FUZZ_SECONDS:-15}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Build every target first, so a build error is reported as one and the timed runs only fuzz.
cargo fuzz build

mapfile -t targets < <(cargo fuzz list)
failed=()
for target in "${targets[@]}"; do
  printf '\n-- fuzz %s for %ss\n' "$target" "$seconds"
  # -timeout: one input running longer than this is a hang (the default is 20 minutes).
  if ! cargo fuzz run "$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=60; then
    failed+=("$target")
  fi
done

if ((${#failed[@]} > 0)); then
  printf '\nfuzz: crashes found in: %s (inputs in fuzz/artifacts/)\n' "${failed[*]}" >&2
  exit 1
fi
printf '\nfuzz: %d targets ran %ss each without a crash\n' "${#targets[@]}" "$seconds"
