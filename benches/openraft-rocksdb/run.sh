#!/usr/bin/env bash
# Installs what this crate needs to build, when it is missing, and runs cargo with it:
#
#   benches/openraft-rocksdb/run.sh                  # the bench (cargo bench -p tern-bench-openraft-rocksdb)
#   benches/openraft-rocksdb/run.sh bench -p tern-bench-openraft-rocksdb -- '^raft_log_append/'
#   benches/openraft-rocksdb/run.sh test -p tern-bench-openraft-rocksdb   # openraft's suite on the store
#
# The rocksdb crate links the system's RocksDB (Debian's librocksdb-dev, 7.8.3 in bookworm)
# instead of compiling its own copy of RocksDB's C++, and generates its bindings from the
# system's headers with bindgen, which loads libclang. Debian or a derivative with apt-get is
# assumed; elsewhere install RocksDB's library and headers and libclang, and set
# ROCKSDB_LIB_DIR and ROCKSDB_INCLUDE_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(librocksdb-dev libclang-dev)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} > 0)); then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  library="$(dpkg -L librocksdb-dev | grep '/librocksdb\.so$' | head -n 1)"
  ROCKSDB_LIB_DIR="$(dirname "$library")"
fi
export ROCKSDB_LIB_DIR
export ROCKSDB_INCLUDE_DIR="${ROCKSDB_INCLUDE_DIR:-/usr/include}"

if (($# == 0)); then
  set -- bench -p tern-bench-openraft-rocksdb
fi
exec cargo "$@"
