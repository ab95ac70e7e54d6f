# Sourced: a Kafka-compatible broker for the Kafka tests (tansu, memory storage),
# installed once into a cache dir (~10 minutes to compile the first time).
HAMS_TANSU="${HAMS_TANSU:-$HOME/.cache/hams/bin/tansu}"
if [ ! -x "$HAMS_TANSU" ]; then
  if command -v tansu >/dev/null 2>&1; then
    HAMS_TANSU=$(command -v tansu)
  else
    echo "broker: installing tansu (Kafka-compatible broker) into $HOME/.cache/hams (once)" >&2
    cargo install tansu --locked --features dynostore --root "$HOME/.cache/hams" >&2 \
      || echo "broker: tansu could not be installed; the Kafka tests will be skipped" >&2
  fi
fi
export HAMS_TANSU
