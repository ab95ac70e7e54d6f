# Sourced by the other scripts: installs what a fresh machine lacks.
# RocksDB's Rust bindings are generated with bindgen, which needs libclang.
set -euo pipefail
if [ -z "${LIBCLANG_PATH:-}" ] && ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so'; then
  echo "setup: installing libclang-dev (needed to build RocksDB's bindings)" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq libclang-dev >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libclang-dev >/dev/null; }
fi
