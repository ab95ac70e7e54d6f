# Sourced: makes a CPU libtorch available for the `torch` feature (tch 0.26 needs PyTorch 2.13.0).
# The package index only has the CUDA wheel; its libtorch runs on CPU when no GPU is present,
# and needs the CUDA runtime and CUPTI libraries to load. Installed once into a cache dir.
HAMS_LIBTORCH_DIR="${HAMS_LIBTORCH_DIR:-$HOME/.cache/hams/libtorch-2.13.0}"
if [ ! -f "$HAMS_LIBTORCH_DIR/torch/lib/libtorch_cpu.so" ]; then
  echo "libtorch: installing torch==2.13.0 (CPU use) into $HAMS_LIBTORCH_DIR (~540 MB, once)" >&2
  python3 -m pip install --quiet --no-deps --target "$HAMS_LIBTORCH_DIR" \
    torch==2.13.0 nvidia-cuda-runtime nvidia-cuda-cupti >&2
fi
export LIBTORCH="$HAMS_LIBTORCH_DIR/torch"
export LIBTORCH_BYPASS_VERSION_CHECK="${LIBTORCH_BYPASS_VERSION_CHECK:-0}"
_nv_libs=$(find "$HAMS_LIBTORCH_DIR/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$LIBTORCH/lib:${_nv_libs}${LD_LIBRARY_PATH:-}"
unset _nv_libs
