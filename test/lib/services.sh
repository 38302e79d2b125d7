#!/usr/bin/env bash
# services.sh — a private PostgreSQL cluster and Redis for tests and `make run`.
#
#   services.sh start DIR [PG_PORT REDIS_PORT]   create (first time) and start both
#   services.sh stop DIR                         stop both (data is kept)
#   services.sh destroy DIR                      stop both and remove DIR
#   services.sh pg-start|pg-stop DIR             start / stop PostgreSQL only
#   services.sh redis-start|redis-stop DIR       start / stop Redis only
#   services.sh pg-ctl DIR start|stop|restart|status
#   services.sh redis-ctl DIR start|stop|restart|status
#   services.sh status DIR
#
# Layout:  DIR/pg/data (cluster, owned by the `postgres` user when run as
# root; see pg_place), DIR/pg/sock (its unix socket), DIR/pg/postgres.log,
# DIR/redis/ (config, pid, log; TCP only), DIR/services.env (shell-sourceable:
# PG_PORT REDIS_PORT PG_CONNINFO PG_SUPER_CONNINFO PG_CTL_CMD REDIS_CTL_CMD).
#
# Both listen on 127.0.0.1 only.  Ports are the ones given, else those of an
# existing DIR, else free ones picked at random (a bind race with a parallel
# run is retried with new ports).  Every command blocks until done; a restart
# keeps the port.  Stale pid files left by a crash are detected and removed.
# PG_SHARED_BUFFERS (default 32MB) sets PostgreSQL's shared_buffers at start.
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

die() { echo "services.sh: $*" >&2; exit 1; }
log() { [ -n "${SERVICES_QUIET:-}" ] || echo "services.sh: $*" >&2; }

pg_bindir() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] || continue
    best=$d   # glob sorts ascending; single-digit versions < 10 do not occur (>= 10)
  done
  [ -n "$best" ] || best=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$best/initdb" ] || die "PostgreSQL server binaries not found (install postgresql or set PG_BIN)"
  echo "$best"
}

# Runs a command as the PostgreSQL owner: the `postgres` user when we are
# root (initdb/postgres refuse to run as root), else ourselves.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$PGROOT" && exec runuser -u postgres -- env HOME="$PGROOT" PGDATA="$PGDATA" "$@") 9>&-
  else
    (cd "$PGROOT" && exec env PGDATA="$PGDATA" "$@") 9>&-
  fi
}

pg_paths() {
  PGDATA=$PGROOT/data
  PGSOCK=$PGROOT/sock
  PGLOG=$PGROOT/postgres.log
}

setup_dir() {
  [ -n "${1:-}" ] || die "DIR missing"
  mkdir -p "$1"
  DIR=$(cd "$1" && pwd)
  PGROOT=$DIR/pg
  # DIR/pg may be a link to a directory elsewhere (see pg_place)
  [ -L "$PGROOT" ] && PGROOT=$(readlink -f "$PGROOT")
  pg_paths
  RDIR=$DIR/redis
  RCONF=$RDIR/redis.conf
  RPID=$RDIR/redis.pid
  RLOG=$RDIR/redis.log
  ENVF=$DIR/services.env
  PGBIN=$(pg_bindir)
}

# ---------------------------------------------------------------- ports
port_listening() { # port -> 0 if something listens on it (any address)
  local hex
  hex=$(printf '%04X' "$1")
  # /proc/net/tcp{,6}: local_address is ADDR:PORT (hex), st 0A = LISTEN
  awk -v p=":$hex" 'NR>1 && $4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit f?0:1}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_port() { # below the ephemeral range so outgoing connections never hold it
  local i p
  for i in $(seq 1 200); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    port_listening "$p" || { echo "$p"; return; }
  done
  die "no free port found"
}

# ---------------------------------------------------------------- PostgreSQL
pg_conf_port() { sed -n "s/^port *= *\([0-9]*\).*/\1/p" "$PGDATA/paygate.conf" 2>/dev/null | tail -1 || true; }

pg_write_conf() { # port
  as_pg sh -c "cat > '$PGDATA/paygate.conf'" <<EOF
# written by test/lib/services.sh
listen_addresses = '127.0.0.1'
port = $1
unix_socket_directories = '$PGSOCK'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 200
shared_buffers = ${PG_SHARED_BUFFERS:-32MB}
logging_collector = off
log_line_prefix = '%m [%p] %d '
log_min_messages = warning
EOF
}

# Where the cluster lives: DIR/pg, unless the postgres user cannot reach DIR
# (e.g. a clone under a private home directory) or DIR is so deep that the
# unix socket path would pass the kernel's 107-byte limit: then in a
# directory under /var/tmp that DIR/pg links to (`destroy` removes it).
pg_place() {
  [ -e "$DIR/pg" ] && return 0
  local alt=0 sock="$DIR/pg/sock/.s.PGSQL.65535.lock"
  if [ "$(id -u)" = 0 ]; then
    chmod a+x "$DIR"
    runuser -u postgres -- test -x "$DIR" || alt=1
  fi
  [ ${#sock} -le 100 ] || alt=1
  if [ "$alt" = 1 ]; then
    PGROOT=$(mktemp -d /var/tmp/paygate-pg.XXXXXX)
    ln -s "$PGROOT" "$DIR/pg"
    pg_paths
    log "PostgreSQL cluster in $PGROOT (linked from $DIR/pg)"
  fi
}

pg_initdb() {
  pg_place
  mkdir -p "$PGROOT"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PGROOT"
    runuser -u postgres -- test -x "$PGROOT" ||
      die "user postgres cannot reach $PGROOT (make its parent directories traversable)"
  fi
  chmod 700 "$PGROOT"
  as_pg mkdir -p "$PGSOCK"
  if [ -f "$PGDATA/PG_VERSION" ]; then return 0; fi
  log "initdb $PGDATA"
  as_pg rm -rf "$PGDATA"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=trust >"$PGROOT/initdb.log" 2>&1 ||
    { cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }
  as_pg sh -c "echo \"include_if_exists = 'paygate.conf'\" >> '$PGDATA/postgresql.conf'"
}

pg_running() { # 0 if our postmaster is alive
  [ -f "$PGDATA/postmaster.pid" ] || return 1
  local pid
  pid=$(head -1 "$PGDATA/postmaster.pid" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # is it really a postgres whose data directory is ours? (pid reuse after a crash)
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$PGDATA" && return 0
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PGDATA" ]
}

pg_clear_stale() {
  pg_running && return 0
  if [ -f "$PGDATA/postmaster.pid" ]; then
    log "removing stale $PGDATA/postmaster.pid"
    rm -f "$PGDATA/postmaster.pid"
  fi
  rm -f "$PGSOCK"/.s.PGSQL.* 2>/dev/null || true
}

pg_ready() {
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -d postgres -U postgres -t 2 >/dev/null 2>&1
}

pg_start_once() { # port -> 0 started, 1 failed
  local port=$1
  pg_write_conf "$port"
  pg_clear_stale
  if pg_running; then
    log "PostgreSQL already running in $PGDATA"
  else
    if [ "$(id -u)" = 0 ]; then touch "$PGLOG"; chown postgres: "$PGLOG"; fi
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 -s start >/dev/null 2>&1 || return 1
  fi
  local i
  for i in $(seq 1 300); do
    pg_ready "$port" && return 0
    pg_running || return 1
    sleep 0.1
  done
  return 1
}

psql_su() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }

pg_bootstrap() { # role + database, idempotent
  local has
  has=$(psql_su -tAc "SELECT 1 FROM pg_roles WHERE rolname='paygate'")
  [ "$has" = 1 ] || psql_su -c "CREATE ROLE paygate LOGIN"
  has=$(psql_su -tAc "SELECT 1 FROM pg_database WHERE datname='paygate'")
  [ "$has" = 1 ] || psql_su -c "CREATE DATABASE paygate OWNER paygate ENCODING 'UTF8' TEMPLATE template0"
}

pg_start() { # [wanted port]
  local want=${1:-} tries=1 port
  pg_initdb
  if [ -z "$want" ]; then want=$(pg_conf_port); fi
  if pg_running; then
    port=$(pg_conf_port)
    [ -z "$want" ] || [ "$want" = "$port" ] || { pg_stop; pg_start "$want"; return; }
    PG_PORT=$port; pg_ready "$PG_PORT" || pg_start_once "$PG_PORT" || die "PostgreSQL not ready"
    return 0
  fi
  [ -n "$want" ] || tries=5
  local i
  for i in $(seq 1 "$tries"); do
    port=${want:-$(free_port)}
    if pg_start_once "$port"; then PG_PORT=$port; return 0; fi
    # a bind race with a parallel run: try another free port
    if [ "$i" -lt "$tries" ]; then log "PostgreSQL did not start on port $port, retrying"; fi
  done
  tail -n 30 "$PGLOG" >&2 2>/dev/null || true
  die "PostgreSQL failed to start (log: $PGLOG)"
}

pg_stop() {
  [ -d "$PGDATA" ] || return 0
  if pg_running; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 -s stop >/dev/null 2>&1 ||
      as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 -s stop >/dev/null 2>&1 || true
    # belt and braces: wait until the postmaster is really gone
    local pid i
    pid=$(head -1 "$PGDATA/postmaster.pid" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]]; then
      for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
    fi
  fi
  pg_clear_stale
}

# ---------------------------------------------------------------- Redis
redis_conf_port() { sed -n 's/^port \([0-9]*\)$/\1/p' "$RCONF" 2>/dev/null | tail -1 || true; }

redis_pid() { cat "$RPID" 2>/dev/null || true; }

redis_running() {
  local pid
  pid=$(redis_pid)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "redis" || return 1
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$RDIR" ]
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }

redis_ours() { # port -> 0 if the redis answering there is the one whose pid we hold
  local pid got
  pid=$(redis_pid)
  got=$(redis_cli "$1" INFO server | tr -d '\r' | sed -n 's/^process_id:\([0-9]*\)$/\1/p')
  [ -n "$got" ] && [ "$got" = "$pid" ]
}

redis_write_conf() { # port
  mkdir -p "$RDIR"
  cat > "$RCONF" <<EOF
# written by test/lib/services.sh
bind 127.0.0.1
port $1
protected-mode no
daemonize yes
pidfile $RPID
logfile $RLOG
dir $RDIR
save ""
appendonly no
EOF
}

redis_start_once() { # port
  local port=$1 i
  redis_write_conf "$port"
  if ! redis_running; then
    rm -f "$RPID"
    (cd "$RDIR" && exec redis-server "$RCONF") >/dev/null 2>&1 9>&- || return 1
  fi
  for i in $(seq 1 200); do
    if redis_running && redis_ours "$port"; then return 0; fi
    # daemonize: the pid file appears once the server runs; it exits on a bind failure
    if [ $i -gt 10 ] && ! redis_running; then return 1; fi
    sleep 0.05
  done
  return 1
}

redis_start() { # [wanted port]
  local want=${1:-} tries=1 port
  mkdir -p "$RDIR"
  [ -n "$want" ] || want=$(redis_conf_port)
  if redis_running; then
    port=$(redis_conf_port)
    if [ -n "$want" ] && [ "$want" != "$port" ]; then redis_stop; redis_start "$want"; return; fi
    REDIS_PORT=$port; return 0
  fi
  [ -n "$want" ] || tries=5
  local i
  for i in $(seq 1 "$tries"); do
    port=${want:-$(free_port)}
    if redis_start_once "$port"; then REDIS_PORT=$port; return 0; fi
    redis_stop
    if [ "$i" -lt "$tries" ]; then log "Redis did not start on port $port, retrying"; fi
  done
  tail -n 20 "$RLOG" >&2 2>/dev/null || true
  die "Redis failed to start (log: $RLOG)"
}

redis_stop() {
  local pid i
  if redis_running; then
    pid=$(redis_pid)
    redis_cli "$(redis_conf_port)" SHUTDOWN NOSAVE >/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.1
    fi
  fi
  rm -f "$RPID"
}

# ---------------------------------------------------------------- env file
write_env() {
  PG_PORT=${PG_PORT:-$(pg_conf_port)}
  REDIS_PORT=${REDIS_PORT:-$(redis_conf_port)}
  local tmp=$ENVF.tmp.$$
  q() { printf "%s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }
  {
    echo "# written by test/lib/services.sh"
    q SERVICES_DIR "$DIR"
    q PG_PORT "$PG_PORT"
    q REDIS_PORT "$REDIS_PORT"
    q PG_CONNINFO "host=127.0.0.1 port=$PG_PORT dbname=paygate user=paygate"
    q PG_SUPER_CONNINFO "host=127.0.0.1 port=$PG_PORT dbname=paygate user=postgres"
    q PG_CTL_CMD "bash $SELF pg-ctl $DIR"
    q REDIS_CTL_CMD "bash $SELF redis-ctl $DIR"
  } > "$tmp"
  mv "$tmp" "$ENVF"
}

# ---------------------------------------------------------------- main
cmd=${1:-}
[ -n "$cmd" ] || die "usage: services.sh start|stop|pg-start|pg-stop|redis-start|redis-stop|pg-ctl|redis-ctl|status DIR ..."
setup_dir "${2:-}"
# one command at a time per DIR
exec 9>"$DIR/.services.lock"
flock 9

case "$cmd" in
  start)
    pg_start "${3:-}"
    pg_bootstrap
    redis_start "${4:-}"
    write_env
    log "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT ($ENVF)"
    ;;
  stop)        redis_stop; pg_stop ;;
  destroy)     # stop, then remove DIR and the cluster (also when it lives elsewhere)
    redis_stop; pg_stop
    exec 9>&-
    if [ -L "$DIR/pg" ]; then rm -rf "$(readlink -f "$DIR/pg")"; fi
    rm -rf "$DIR"
    ;;
  pg-start)    pg_start ""; write_env ;;
  pg-stop)     pg_stop ;;
  redis-start) redis_start ""; write_env ;;
  redis-stop)  redis_stop ;;
  pg-ctl|redis-ctl)
    what=${cmd%-ctl}
    case "${3:-}" in
      start)   "${what}_start" ""; write_env ;;
      stop)    "${what}_stop" ;;
      restart) "${what}_stop"; "${what}_start" ""; write_env ;;
      status)  if "${what}_running"; then echo running; else echo stopped; exit 3; fi ;;
      *) die "usage: services.sh $cmd DIR start|stop|restart|status" ;;
    esac
    ;;
  status)
    rc=0
    if pg_running; then echo "postgres: running (port $(pg_conf_port))"; else echo "postgres: stopped"; rc=3; fi
    if redis_running; then echo "redis: running (port $(redis_conf_port))"; else echo "redis: stopped"; rc=3; fi
    exit $rc
    ;;
  *) die "unknown command $cmd" ;;
esac
