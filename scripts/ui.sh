#!/usr/bin/env bash
# `make ui`: a local Prefect server on 127.0.0.1:4200 plus the deployments of prefect.yaml served
# in-process (relabel with its new-SAE trigger, watch-saes hourly, scale-out and merge).
# Open http://127.0.0.1:4200 : Runs -> a relabel run -> Artifacts (progress, labels, failures,
# summary with the scale-sweep plot). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PREFECT=${PREFECT:-.venv/bin/prefect}
HOST=${PREFECT_SERVER_API_HOST:-127.0.0.1}
PORT=${PREFECT_SERVER_API_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export SELFEXPLAIN_ROOT=$PWD
mkdir -p "$PREFECT_HOME" inbox

"$PREFECT" server start --host "$HOST" --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
server=$!
serve=
browser=
stop() {  # the runner first (it pauses its deployments through the API), then the server
  trap - INT TERM
  [ -n "$browser" ] && kill "$browser" 2>/dev/null || true
  if [ -n "$serve" ]; then
    kill -TERM "$serve" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$serve" 2>/dev/null || break; sleep 1; done
    kill -KILL "$serve" 2>/dev/null || true
  fi
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM
trap 'kill "$server" 2>/dev/null || true' EXIT

printf 'starting Prefect server on http://%s:%s ' "$HOST" "$PORT"
for _ in $(seq 1 120); do
  if "$PY" - "$PREFECT_API_URL" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
PYEOF
  if ! kill -0 "$server" 2>/dev/null; then
    echo; echo "the Prefect server exited; see $PREFECT_HOME/server.log" >&2; exit 1
  fi
  printf '.'; sleep 1
done
echo " up"
echo "UI: http://$HOST:$PORT   (server log: $PREFECT_HOME/server.log)"
echo "start a run:  $PREFECT deployment run relabel/relabel   or drop an SAE folder into inbox/"
WAREHOUSE=${WAREHOUSE:-warehouse.duckdb}
if [ -f "$WAREHOUSE" ]; then  # the feature browser beside the UI, read-only
  .venv/bin/selfexplain browse --warehouse "$WAREHOUSE" --port "${BROWSE_PORT:-8765}" &
  browser=$!
else
  echo "feature browser: no $WAREHOUSE yet (make run fills it; then make browse)"
fi
"$PY" -m flows.serve "$@" &
serve=$!
wait "$serve" || true
