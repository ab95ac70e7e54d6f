# Sourced: Triton's Python client (tritonclient, HTTP and gRPC) for the serving tests,
# installed once into a virtualenv in a cache dir; exports HAMS_TRITON_PYTHON.
HAMS_TRITON_VENV="${HAMS_TRITON_VENV:-$HOME/.cache/hams/tritonclient-venv}"
if [ ! -x "$HAMS_TRITON_VENV/bin/python" ] || ! "$HAMS_TRITON_VENV/bin/python" -c "import tritonclient.http, tritonclient.grpc, numpy" 2>/dev/null; then
  echo "tritonclient: installing it into $HAMS_TRITON_VENV (once)" >&2
  python3 -m venv "$HAMS_TRITON_VENV" >&2 && "$HAMS_TRITON_VENV/bin/pip" install --quiet "tritonclient[http,grpc]" numpy >&2 \
    || echo "tritonclient: could not be installed; its serving test will fail" >&2
fi
export HAMS_TRITON_PYTHON="$HAMS_TRITON_VENV/bin/python"
