# shellcheck shell=bash disable=SC2034
# common.sh - sourced by the tests/env scripts: the state directory, messages, starting
# and stopping our own background processes (pid files checked against the command
# line), bounded waits and test certificates.

ENV_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=/usr/bin/python3 # Debian's: the image digests depend on its tarfile and zlib
STATE="${OS_TESTENV_STATE:-${TMPDIR:-/tmp}/openshell-testenv-$(id -u)}"

die() {
  echo "tests/env: $*" >&2
  exit 1
}
info() { [ -n "${QUIET:-}" ] || echo "tests/env: $*" >&2; }
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c is missing: run tests/env/install.sh as root"
  done
}
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (network namespace, /etc/hosts): run it with sudo"; }

# The state dir: ours, not a symlink, not writable by others (it lives in /tmp).
state_dir() {
  if [ ! -e "$STATE" ]; then
    mkdir -m 0755 "$STATE" || die "cannot create $STATE"
  fi
  [ ! -L "$STATE" ] && [ -d "$STATE" ] || die "$STATE is not a directory; remove it"
  [ "$(stat -c %u "$STATE")" = "$(id -u)" ] || die "$STATE belongs to someone else; remove it"
  case "$(stat -c %A "$STATE")" in ?????w????|????????w?) die "$STATE is writable by others; remove it" ;; esac
  chmod 0755 "$STATE"
}

# Serialise start/stop: take a lock on fd 9 (closed again for every child we launch).
lock() { exec 9>"$STATE/.lock" && flock -w 60 9 || die "another tests/env script holds $STATE/.lock"; }

# pid_of PIDFILE PATTERN: print the pid if it runs and its command line has PATTERN.
pid_of() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
  echo "$pid"
}

# launch PIDFILE LOG CMD...: start CMD in a session of its own, its pid in PIDFILE.
launch() {
  local pidfile="$1" log="$2"
  shift 2
  rm -f "$pidfile"
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$log" 2>&1 9>&- &
  for _ in $(seq 50); do
    [ -s "$pidfile" ] && return 0
    sleep 0.02
  done
  die "$* did not start; see $log"
}

# stop_pid PIDFILE PATTERN: TERM, KILL after 5 s; only a process whose command line
# matches (a zombie has none: it is gone for us, whenever init reaps it).
stop_pid() {
  local pid
  if pid="$(pid_of "$1" "$2")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      pid_of "$1" "$2" >/dev/null || break
      sleep 0.05
    done
    ! pid_of "$1" "$2" >/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.1 s.
wait_until() {
  local secs="$1" what="$2"
  shift 2
  for _ in $(seq $((secs * 10))); do
    "$@" && return 0
    sleep 0.1
  done
  die "$what did not come up within $secs s"
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# make_ca DIR CN [nameConstraints]: an EC P-256 CA (10 years) in DIR/ca.{crt,key}, once.
make_ca() {
  local dir="$1" cn="$2" nc="${3:-}" ext=()
  [ -s "$dir/ca.crt" ] && return 0
  mkdir -p "$dir"
  [ -z "$nc" ] || ext=(-addext "nameConstraints=$nc")
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt.tmp" -subj "/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    "${ext[@]}" 2>"$dir/openssl.err") || die "creating the CA in $dir failed: $(cat "$dir/openssl.err")"
  chmod 0644 "$dir/ca.crt.tmp"
  mv "$dir/ca.crt.tmp" "$dir/ca.crt"
  rm -f "$dir/openssl.err" "$dir/server.crt" # a new CA: a new server certificate too
}

# make_cert DIR CN SANS: a server certificate (2 years) signed by DIR/ca, unless a valid
# one for the same names is there.
make_cert() {
  local dir="$1" cn="$2" sans="$3"
  if [ -s "$dir/server.crt" ] && [ "$(cat "$dir/server.sans" 2>/dev/null)" = "$sans" ] &&
    openssl x509 -checkend 2592000 -noout -in "$dir/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/server.key" -subj "/CN=$cn" 2>"$dir/openssl.err" |
    openssl x509 -req -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -days 730 -set_serial "0x$(openssl rand -hex 12)" \
      -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=$sans") -out "$dir/server.crt.tmp" 2>>"$dir/openssl.err") ||
    die "creating the server certificate in $dir failed: $(cat "$dir/openssl.err")"
  chmod 0644 "$dir/server.crt.tmp"
  mv "$dir/server.crt.tmp" "$dir/server.crt"
  echo "$sans" >"$dir/server.sans"
  rm -f "$dir/openssl.err"
}
