#!/usr/bin/env bash
# test/run.sh — the test driver behind `make test|unit|integration`.
#
#   bash test/run.sh all|unit|integration
#
# Starts a private PostgreSQL + Redis in a temporary directory (test/lib/
# services.sh) and exports, for the unit tests that need them:
#   GW_TEST_PG_CONNINFO   libpq conninfo of database paygate, user paygate
#   GW_TEST_PG_PORT, GW_TEST_REDIS_PORT
#   GW_TEST_PG_CTL        "$GW_TEST_PG_CTL stop|start|restart" stops/starts that PostgreSQL
#   GW_TEST_REDIS_CTL     the same for Redis
# then runs every build/asan/unit/test_* (cmocka, TAP output, ASan+UBSan, a
# timeout each) and `node --test test/integration/` (each integration test
# file starts services of its own through test/lib/harness.js, under this
# run's temporary directory).  Services and the temporary directory are
# always removed, also on failure or Ctrl-C.
#
# Prints per-suite results and, as the very last line, "N passed, N failed".
# Exits non-zero when a test failed or a suite could not run (a suite that
# could not run counts as one failure).
#
# Environment knobs: UNIT_TIMEOUT (s, default 120), INTEGRATION_TIMEOUT (s,
# default 1800), TEST_FILTER (substring: only unit binaries / integration
# files whose name contains it), KEEP_TMP=1 (keep the temporary directory).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=${1:-all}
case "$MODE" in all|unit|integration) ;; *) echo "usage: $0 all|unit|integration" >&2; exit 2 ;; esac

UNIT_TIMEOUT=${UNIT_TIMEOUT:-120}
INTEGRATION_TIMEOUT=${INTEGRATION_TIMEOUT:-1800}
SERVICES="$ROOT/test/lib/services.sh"

TOTAL_PASS=0
TOTAL_FAIL=0
SUMMARY=()

TMP=$(mktemp -d /tmp/paygate-test.XXXXXX)
chmod 711 "$TMP"       # the postgres user must traverse it
CLEANED=0
cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  # integration files' own services (harness.js puts them under $TMP/it)
  local d
  for d in "$TMP"/it/paygate-it-*/ "$TMP"/services/; do
    [ -d "$d" ] || continue
    [ -f "$d/services.env" ] || [ -d "$d/pg" ] || continue
    SERVICES_QUIET=1 bash "$SERVICES" destroy "$d" >/dev/null 2>&1 || true
  done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "test/run.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
on_signal() {
  trap - INT TERM
  echo "test/run.sh: interrupted" >&2
  # end the running suite (its process group) before cleaning up
  [ -n "${CHILD:-}" ] && kill -TERM -- "-$CHILD" 2>/dev/null
  cleanup
  exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

# Runs a command with a timeout, its output to a log file and to our stdout
# as it comes.  timeout(1) puts itself and the command in a process group of
# their own, whose id goes to CHILD so that an interrupt can end all of it.
# In the background + wait, so that our traps run at once.  Sets RC.
CHILD=""
run_logged() { # logfile timeout cmd...
  local log=$1 t=$2; shift 2
  local pidf="$log.pid" rcf="$log.rc"
  rm -f "$pidf" "$rcf"
  ( timeout -k 10 "$t" "$@" </dev/null 2>&1 &
    echo $! > "$pidf"
    wait $!
    echo $? > "$rcf" ) | tee "$log" &
  local teepid=$!
  local i
  for i in $(seq 1 50); do [ -s "$pidf" ] && break; sleep 0.02; done
  CHILD=$(cat "$pidf" 2>/dev/null || true)
  wait "$teepid"
  RC=$(cat "$rcf" 2>/dev/null || echo 1)
  CHILD=""
}

suite_result() { # name passed failed note
  TOTAL_PASS=$((TOTAL_PASS + $2))
  TOTAL_FAIL=$((TOTAL_FAIL + $3))
  SUMMARY+=("$(printf '%-34s %4d passed, %4d failed%s' "$1" "$2" "$3" "${4:+  ($4)}")")
}

# ------------------------------------------------------------------ services
echo "== services"
if SERVICES_QUIET= bash "$SERVICES" start "$TMP/services"; then
  # shellcheck disable=SC1091
  . "$TMP/services/services.env"
  export GW_TEST_PG_CONNINFO="$PG_CONNINFO"
  export GW_TEST_PG_PORT="$PG_PORT"
  export GW_TEST_REDIS_HOST=127.0.0.1
  export GW_TEST_REDIS_PORT="$REDIS_PORT"
  export GW_TEST_PG_CTL="$PG_CTL_CMD"
  export GW_TEST_REDIS_CTL="$REDIS_CTL_CMD"
  SERVICES_OK=1
else
  echo "test/run.sh: could not start PostgreSQL/Redis" >&2
  suite_result "services" 0 1 "could not start"
  SERVICES_OK=0
fi

# ------------------------------------------------------------------ unit
run_unit() {
  local srcs bins=() b name log p f plan seen
  srcs=$(ls test/unit/test_*.c 2>/dev/null | wc -l)
  for b in build/asan/unit/test_*; do
    [ -x "$b" ] && [ -f "$b" ] || continue
    [ -z "${TEST_FILTER:-}" ] || [[ "$b" == *"$TEST_FILTER"* ]] || continue
    bins+=("$b")
  done
  if [ ${#bins[@]} -eq 0 ]; then
    if [ "$srcs" -gt 0 ] && [ -z "${TEST_FILTER:-}" ]; then
      echo "test/run.sh: test/unit has $srcs test source(s) but build/asan/unit has no binaries (run 'make asan')" >&2
      suite_result "unit" 0 1 "no test binaries built"
    else
      echo "== unit: no unit tests"
    fi
    return
  fi
  mkdir -p "$TMP/logs"
  for b in "${bins[@]}"; do
    name=$(basename "$b")
    log="$TMP/logs/$name.log"
    echo "== unit: $name"
    run_logged "$log" "$UNIT_TIMEOUT" env \
      CMOCKA_MESSAGE_OUTPUT=TAP \
      ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
      UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
      "$b"
    # cmocka TAP: "1..N" per group, then "ok K - name" / "not ok K - name"
    p=$(grep -cE '^ok [0-9]+' "$log")
    f=$(grep -cE '^not ok [0-9]+' "$log")
    plan=$(grep -oE '^1\.\.[0-9]+' "$log" | awk -F. '{s+=$3} END{print s+0}')
    seen=$((p + f))
    local note=""
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
      note="timed out after ${UNIT_TIMEOUT}s"
    elif [ "$RC" -ne 0 ] && [ "$f" -eq 0 ]; then
      note="exit status $RC"
    fi
    if [ "$seen" -lt "$plan" ]; then
      # a crash (ASan/UBSan abort) or a timeout: the tests that did not run fail
      f=$((f + plan - seen))
      note="${note:-exit status $RC}; $((plan - seen)) test(s) did not run"
    elif [ "$RC" -ne 0 ] && [ "$f" -eq 0 ]; then
      # e.g. LeakSanitizer at exit, or a crash before the first plan line
      f=1
    fi
    if [ "$plan" -eq 0 ] && [ "$RC" -eq 0 ]; then note="no tests"; fi
    suite_result "unit/$name" "$p" "$f" "$note"
  done
}

# ------------------------------------------------------------------ integration
run_integration() {
  local files=() f log
  for f in test/integration/*.test.js test/integration/*.test.mjs test/integration/*.test.cjs; do
    [ -f "$f" ] || continue
    [ -z "${TEST_FILTER:-}" ] || [[ "$f" == *"$TEST_FILTER"* ]] || continue
    files+=("$f")
  done
  if [ ${#files[@]} -eq 0 ]; then echo "== integration: no integration tests"; return; fi
  if ! command -v node >/dev/null; then
    suite_result "integration" 0 1 "node not found"; return
  fi
  local bin=${PAYGATED_BIN:-build/asan/paygated}
  [ -x "$bin" ] || echo "test/run.sh: warning: $bin does not exist (run 'make asan'); the daemon tests will fail" >&2
  mkdir -p "$TMP/it" "$TMP/logs"
  chmod 711 "$TMP/it"
  log="$TMP/logs/integration.tap"
  echo "== integration: ${files[*]}"
  local args=("${files[@]}")
  [ -z "${TEST_FILTER:-}" ] && args=(test/integration/)
  run_logged "$log" "$INTEGRATION_TIMEOUT" env TMPDIR="$TMP/it" \
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    node --test --test-reporter=tap "${args[@]}"
  # node's TAP summary: "# pass N", "# fail N", "# cancelled N"
  local p fl c note=""
  p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -1)
  fl=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -1)
  c=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$log" | tail -1)
  if [ -z "$p" ] || [ -z "$fl" ]; then
    [ "$RC" -eq 124 ] && note="timed out after ${INTEGRATION_TIMEOUT}s" || note="no TAP summary, exit status $RC"
    suite_result "integration" "${p:-0}" $(( ${fl:-0} + ${c:-0} + 1 )) "$note"
    return
  fi
  fl=$((fl + ${c:-0}))
  [ "${c:-0}" -gt 0 ] && note="$c cancelled"
  if [ "$RC" -ne 0 ] && [ "$fl" -eq 0 ]; then fl=1; note="exit status $RC"; fi
  suite_result "integration" "$p" "$fl" "$note"
}

if [ "$SERVICES_OK" = 1 ]; then
  case "$MODE" in
    all) run_unit; run_integration ;;
    unit) run_unit ;;
    integration) run_integration ;;
  esac
fi

echo
echo "== results"
for line in "${SUMMARY[@]}"; do echo "$line"; done
cleanup
trap - EXIT
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
if [ "$TOTAL_FAIL" -gt 0 ]; then exit 1; fi
exit 0
