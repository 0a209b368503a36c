#!/usr/bin/env bash
# registry.sh - the test registries of tests/env: Debian's docker-registry (CNCF
# distribution 2.8) on 127.0.0.1 in five flavours sharing one storage, plus the token
# server of the two bearer flavours. Works for any user (state per uid).
#
#   registry.sh start    start what is not running (idempotent), wait until it answers
#   registry.sh stop     stop what this state dir started
#   registry.sh env      print the export lines; fails when an instance is down
#   registry.sh status   one line per process; exit 0 all up, 1 some down, 3 none up
#
# plain  :5000 http,  push allowed       OS_TEST_REGISTRY
# tls    :5001 https (test CA)           OS_TEST_REGISTRY_TLS, OS_TEST_REGISTRY_CA
# basic  :5002 http,  htpasswd           OS_TEST_REGISTRY_BASIC
# bearer :5003 http,  tokens from :5005  OS_TEST_REGISTRY_BEARER (anonymous pull except private/*)
# secure :5004 https, tokens from :5006  OS_TEST_REGISTRY_SECURE
# Credentials OS_TEST_REGISTRY_USER/PASSWORD (testuser/testpassword: public test values).
# OS_TEST_REGISTRY_PORT=N moves the base port (default 5000; the others are N+1..N+6).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

R="$STATE/registry"
BASE="${OS_TEST_REGISTRY_PORT:-5000}"
[[ "$BASE" =~ ^[0-9]+$ ]] && [ "$BASE" -ge 1 ] && [ "$BASE" -le 65529 ] ||
  die "OS_TEST_REGISTRY_PORT must be a port number, got '$BASE'"
USER_NAME=testuser
PASSWORD=testpassword
SERVICE=openshell-testenv-registry
INSTANCES=(plain tls basic bearer secure)
declare -A OFFSET=([plain]=0 [tls]=1 [basic]=2 [bearer]=3 [secure]=4 [token]=5 [token-tls]=6)
declare -A SCHEME=([plain]=http [tls]=https [basic]=http [bearer]=http [secure]=https)
declare -A VAR=([plain]=OS_TEST_REGISTRY [tls]=OS_TEST_REGISTRY_TLS [basic]=OS_TEST_REGISTRY_BASIC
  [bearer]=OS_TEST_REGISTRY_BEARER [secure]=OS_TEST_REGISTRY_SECURE)

port() { echo $((BASE + ${OFFSET[$1]})); }
token_pid() { pid_of "$R/token/pid" "$R/auth/signing.key"; }
inst_pid() { pid_of "$R/$1/pid" "$R/$1/config.yml"; }

free_port() {
  port_busy "$1" && die "port $1 ($2) is in use by something else; stop it or move all ports with OS_TEST_REGISTRY_PORT=N"
  return 0
}

answers() { # URL: the registry's /v2/ answers 200 or 401
  local code
  code="$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' -m 2 --cacert "$R/certs/ca.crt" "$1" || true)"
  [ "$code" = 200 ] || [ "$code" = 401 ]
}

setup() {
  need docker-registry openssl htpasswd curl flock setsid ss
  mkdir -p "$R/auth" "$R/storage"
  make_ca "$R/certs" "openshell testenv registry CA"
  make_cert "$R/certs" 127.0.0.1 "IP:127.0.0.1,DNS:localhost"
  if [ ! -s "$R/auth/htpasswd" ]; then
    htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$R/auth/htpasswd.tmp" 2>/dev/null || die "htpasswd failed"
    mv "$R/auth/htpasswd.tmp" "$R/auth/htpasswd"
  fi
  if [ ! -s "$R/auth/signing.crt" ]; then
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=openshell testenv token signer" \
      -keyout "$R/auth/signing.key" -out "$R/auth/signing.crt" 2>/dev/null) || die "creating the token signing key failed"
  fi
}

start_token() {
  token_pid >/dev/null && return 0
  local p1 p2
  p1="$(port token)" p2="$(port token-tls)"
  free_port "$p1" "token server"
  free_port "$p2" "token server, https"
  mkdir -p "$R/token"
  launch "$R/token/pid" "$R/token/log" "$PY" "$ENV_HERE/lib/token_server.py" \
    --http "127.0.0.1:$p1" --https "127.0.0.1:$p2" --cert "$R/certs/server.crt" --cert-key "$R/certs/server.key" \
    --key "$R/auth/signing.key" --user "$USER_NAME:$PASSWORD" --service "$SERVICE" --issuer openshell-testenv-token
  wait_until 15 "the token server (see $R/token/log)" \
    curl --noproxy '*' -sf -o /dev/null -m 2 --cacert "$R/certs/ca.crt" "https://127.0.0.1:$p2/healthz"
}

config() { # NAME: the registry's config file
  local n="$1"
  cat <<EOF
version: 0.1
log:
  level: info
  fields: {instance: $n}
storage:
  filesystem: {rootdirectory: "$R/storage"}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: 127.0.0.1:$(port "$n")
  secret: openshell-testenv
EOF
  [ "${SCHEME[$n]}" = http ] || printf '  tls: {certificate: "%s", key: "%s"}\n' "$R/certs/server.crt" "$R/certs/server.key"
  case "$n" in
    basic) printf 'auth:\n  htpasswd: {realm: openshell-testenv, path: "%s"}\n' "$R/auth/htpasswd" ;;
    bearer | secure)
      local realm
      realm="http://127.0.0.1:$(port token)/token"
      [ "$n" = bearer ] || realm="https://127.0.0.1:$(port token-tls)/token"
      printf 'auth:\n  token: {realm: "%s", service: %s, issuer: openshell-testenv-token, rootcertbundle: "%s"}\n' \
        "$realm" "$SERVICE" "$R/auth/signing.crt"
      ;;
  esac
}

start_instance() {
  local n="$1" p url
  inst_pid "$n" >/dev/null && return 0
  p="$(port "$n")"
  free_port "$p" "registry $n"
  mkdir -p "$R/$n"
  config "$n" >"$R/$n/config.yml"
  launch "$R/$n/pid" "$R/$n/log" "$(command -v docker-registry)" serve "$R/$n/config.yml"
  url="${SCHEME[$n]}://127.0.0.1:$p/v2/"
  wait_until 15 "registry $n at $url (see $R/$n/log)" answers "$url"
  info "registry $n: $url"
}

cmd_env() {
  local n
  for n in "${INSTANCES[@]}"; do
    inst_pid "$n" >/dev/null || die "registry $n is down: run tests/env/registry.sh start"
    echo "export ${VAR[$n]}='127.0.0.1:$(port "$n")'"
  done
  token_pid >/dev/null || die "the token server is down: run tests/env/registry.sh start"
  echo "export OS_TEST_REGISTRY_CA='$R/certs/ca.crt'"
  echo "export OS_TEST_REGISTRY_USER='$USER_NAME'"
  echo "export OS_TEST_REGISTRY_PASSWORD='$PASSWORD'"
}

case "${1:-}" in
  start)
    state_dir
    lock
    setup
    start_token
    for n in "${INSTANCES[@]}"; do start_instance "$n"; done
    ;;
  stop)
    [ -d "$R" ] || exit 0
    state_dir
    lock
    for n in "${INSTANCES[@]}"; do stop_pid "$R/$n/pid" "$R/$n/config.yml"; done
    stop_pid "$R/token/pid" "$R/auth/signing.key"
    info "registries stopped"
    ;;
  env) cmd_env ;;
  status)
    up=0
    for n in "${INSTANCES[@]}" token; do
      if [ "$n" = token ]; then pid="$(token_pid)" || pid=""; else pid="$(inst_pid "$n")" || pid=""; fi
      if [ -n "$pid" ]; then state="running (pid $pid)" up=$((up + 1)); else state=down; fi
      printf '%-7s %-6s %s\n' "$n" "$(port "$n")" "$state"
    done
    [ "$up" = 6 ] && exit 0
    [ "$up" = 0 ] && exit 3
    exit 1
    ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
esac
