#!/usr/bin/env bash
# upstream.sh - the upstream test hosts of tests/env: a network namespace of our own
# (no route out of its subnet) behind a veth pair, with nginx (HTTP 80, HTTPS 443 with
# HTTP/2, HTTPS 8443 HTTP/1.1 only; a private CA), lib/upstream_app.py behind it (echo
# endpoints, WebSocket, a model API stand-in) and a TCP echo, plus names in /etc/hosts.
#
#   upstream.sh start    root: create/repair what is missing, (re)start what changed, wait
#   upstream.sh stop     root: stop our processes, remove the namespace, veth and names
#   upstream.sh env      any user: the export lines; fails when the hosts are down
#   upstream.sh status   any user: exit 0 up, 1 partly up, 3 down
#
# host: ostenv0 10.77.0.1/24  <-veth->  netns openshell-testenv: ostenv1 10.77.0.2-.4/24
#   10.77.0.2  api files wild a.wild b.c.wild .test.openshell   nginx :80 :443 :8443
#   10.77.0.3  other.test.openshell                              the same nginx
#   10.77.0.4  tcp.test.openshell                                TCP echo :7777 (and nginx)
#   10.77.0.5  blackhole.test.openshell                          nothing: connects time out
#   10.77.0.1  hostside.test.openshell                           the host's end of the veth
# The /etc/hosts lines end with "# openshell-testenv"; stop removes exactly those.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

# one instance per host, owned by root: every user reads root's state
U="${TMPDIR:-/tmp}/openshell-testenv-0/upstream"
RUN="$U/run"
NETNS=openshell-testenv
VETH=ostenv0
VETH_NS=ostenv1
NET=10.77.0
SUBNET="$NET.0/24"
TAG="# openshell-testenv"
HOSTS_FILE=/etc/hosts
BIG_SIZE=209715200
APP=127.0.0.1:8081
NAMES=("$NET.2 api.test.openshell" "$NET.2 files.test.openshell" "$NET.2 wild.test.openshell"
  "$NET.2 a.wild.test.openshell" "$NET.2 b.c.wild.test.openshell" "$NET.3 other.test.openshell"
  "$NET.4 tcp.test.openshell" "$NET.5 blackhole.test.openshell" "$NET.1 hostside.test.openshell")

nginx_pid() { pid_of "$RUN/nginx.pid" "$RUN/nginx.conf"; }
app_pid() { pid_of "$RUN/app.pid" "$RUN/upstream_app.py"; }
netns_up() { [ -e "/run/netns/$NETNS" ]; }
hosts_lines() { local l; for l in "${NAMES[@]}"; do printf '%-10s %-26s %s\n' "${l% *}" "${l#* }" "$TAG"; done; }
hosts_ok() { [ "$(grep -e " $TAG\$" "$HOSTS_FILE" 2>/dev/null)" = "$(hosts_lines)" ]; }

# ------------------------------------------------------------------------ network
net_setup() {
  local other
  other="$(ip -o -4 addr show | awk -v v="$VETH" -v n="$NET." '$2 != v && index($4, n) == 1 {print $2 " " $4}')"
  [ -z "$other" ] || die "$SUBNET is already used on this host ($other); tests/env needs it for itself"
  other="$(ip -4 route show root "$SUBNET" | grep -v " dev $VETH " || true)"
  [ -z "$other" ] || die "a route into $SUBNET exists on this host ($other); tests/env needs the subnet"
  if ! netns_up; then
    ip netns add "$NETNS" 2>"$RUN/ip.err" ||
      die "ip netns add $NETNS failed (needs CAP_SYS_ADMIN and CAP_NET_ADMIN): $(cat "$RUN/ip.err")"
  fi
  if ! ip link show "$VETH" >/dev/null 2>&1; then
    ip -n "$NETNS" link del "$VETH_NS" >/dev/null 2>&1 || true
    ip link add "$VETH" type veth peer name "$VETH_NS" netns "$NETNS" 2>"$RUN/ip.err" ||
      die "creating the veth pair $VETH/$VETH_NS failed: $(cat "$RUN/ip.err")"
  fi
  ip -n "$NETNS" link show "$VETH_NS" >/dev/null 2>&1 || die "$VETH's peer is not in $NETNS: run upstream.sh stop, then start"
  rm -f "$RUN/ip.err"
  # IPv4 only; nothing is ever forwarded, in either direction
  echo 0 >"/proc/sys/net/ipv4/conf/$VETH/forwarding"
  [ ! -e "/proc/sys/net/ipv6/conf/$VETH/disable_ipv6" ] || echo 1 >"/proc/sys/net/ipv6/conf/$VETH/disable_ipv6"
  ip netns exec "$NETNS" sh -c "echo 0 >/proc/sys/net/ipv4/ip_forward
    [ ! -e /proc/sys/net/ipv6/conf/$VETH_NS/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$VETH_NS/disable_ipv6"
  ip addr replace "$NET.1/24" dev "$VETH"
  ip link set "$VETH" up
  for a in 2 3 4; do ip -n "$NETNS" addr replace "$NET.$a/24" dev "$VETH_NS"; done
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link set "$VETH_NS" up
  # blackhole: frames to a MAC nobody has; the namespace drops them
  ip neigh replace "$NET.5" lladdr 02:00:0a:4d:00:05 dev "$VETH" nud permanent
}

net_remove() {
  local left
  if netns_up; then
    left="$(ip netns pids "$NETNS" 2>/dev/null | tr '\n' ' ')"
    [ -z "${left// /}" ] || echo "tests/env: warning: processes we did not start are in netns $NETNS: $left (left alone)" >&2
  fi
  ! ip link show "$VETH" >/dev/null 2>&1 || ip link del "$VETH"
  ! netns_up || ip netns del "$NETNS"
}

# set_hosts add|remove: rewrite only the lines ending with our tag (atomically, or in
# place when /etc/hosts is a mount point or a symlink)
set_hosts() {
  local tmp
  tmp="$(mktemp "$HOSTS_FILE.openshell-testenv.XXXXXX")"
  grep -ve " $TAG\$" "$HOSTS_FILE" >"$tmp" || true
  [ "$1" = remove ] || hosts_lines >>"$tmp"
  if cmp -s "$tmp" "$HOSTS_FILE"; then
    rm -f "$tmp"
    return 0
  fi
  chmod --reference="$HOSTS_FILE" "$tmp"
  chown --reference="$HOSTS_FILE" "$tmp"
  if [ -L "$HOSTS_FILE" ] || ! mv -f "$tmp" "$HOSTS_FILE" 2>/dev/null; then
    cat "$tmp" >"$HOSTS_FILE"
    rm -f "$tmp"
  fi
}

# ----------------------------------------------------------------------- content
tls_setup() {
  local sans="" l
  for l in "${NAMES[@]}"; do sans+="DNS:${l#* },"; done
  # the CA vouches for nothing but test.openshell names (no IP constraint: Bun, which
  # Claude Code runs on, rejects any chain whose CA has one); its key stays root's
  make_ca "$U/tls" "openshell testenv upstream CA" "critical,permitted;DNS:test.openshell"
  make_cert "$U/tls" api.test.openshell "${sans}DNS:*.test.openshell,DNS:*.wild.test.openshell,IP:$NET.1,IP:$NET.2,IP:$NET.3,IP:$NET.4"
}

big_setup() { # /big: AES-128-CTR keystream under a fixed key: incompressible, the same everywhere
  local f="$U/www/big"
  [ "$(stat -c %s "$f" 2>/dev/null)" = "$BIG_SIZE" ] && [ -s "$f.sha256" ] && return 0
  head -c "$BIG_SIZE" /dev/zero | openssl enc -aes-128-ctr -nosalt -K 6f70656e7368656c6c2d74657374656e \
    -iv 00000000000000000000000000000000 -out "$f.tmp" || die "generating $f failed"
  sha256sum <"$f.tmp" | cut -d' ' -f1 >"$f.sha256"
  chmod 0644 "$f.tmp" "$f.sha256"
  mv "$f.tmp" "$f"
}

nginx_conf() {
  local proxy_headers="" h
  for h in "Scheme \$scheme" "Uri \$request_uri" "Request-Line \$request" "Sni \$ssl_server_name" \
    "Protocol \$server_protocol" "Tls \$ssl_protocol" "Server-Addr \$server_addr" "Server-Port \$server_port" \
    "Client-Addr \$remote_addr" "Connection \$http_connection"; do
    proxy_headers+="            proxy_set_header X-Testenv-${h% *} ${h#* };
"
  done
  cat <<EOF
# generated by tests/env/upstream.sh
daemon off;
worker_processes 2;
user www-data www-data;
pid $RUN/nginx.master.pid;
error_log $RUN/error.log notice;
events { worker_connections 4096; }
http {
    log_format testenv '\$time_iso8601 \$server_addr:\$server_port \$remote_addr:\$remote_port "\$request" '
                       '\$status \$body_bytes_sent host="\$http_host" sni="\$ssl_server_name" tls=\$ssl_protocol';
    access_log $RUN/access.log testenv;
    client_body_temp_path $RUN/tmp/body;
    proxy_temp_path $RUN/tmp/proxy;
    fastcgi_temp_path $RUN/tmp/fastcgi;
    uwsgi_temp_path $RUN/tmp/uwsgi;
    scgi_temp_path $RUN/tmp/scgi;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 10000;
    client_max_body_size 0;
    large_client_header_buffers 8 64k;
    underscores_in_headers on;
    ssl_certificate $U/tls/server.crt;
    ssl_certificate_key $U/tls/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    map \$http_upgrade \$upgrade_or_close { default upgrade; '' close; }
    server {
        listen 80 default_server;
        listen 443 ssl http2 default_server;
        listen 8443 ssl default_server;
        root $U/www;
        add_header X-Testenv-Upstream \$server_addr always;
        location / {
            return 200 "method=\$request_method\nrequest_line=\$request\nuri=\$request_uri\npath=\$uri\nquery=\$args\nhost=\$http_host\nscheme=\$scheme\nsni=\$ssl_server_name\nprotocol=\$server_protocol\nserver_addr=\$server_addr\nserver_port=\$server_port\nclient_addr=\$remote_addr\nclient_port=\$remote_port\nconnection=\$connection\nconnection_requests=\$connection_requests\n";
        }
        location = /big { default_type application/octet-stream; }
        location = /close { return 444; }
        location ~ ^/(headers|anything|status|slow|drip|chunked|ws|v1)(/|\$) {
            proxy_pass http://$APP;
            proxy_http_version 1.1;
            proxy_set_header Host \$http_host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$upgrade_or_close;
$proxy_headers            proxy_buffering off;
            proxy_ignore_client_abort on;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
EOF
}

# ---------------------------------------------------------------------- processes
start_app() {
  install -m 0644 "$ENV_HERE/lib/upstream_app.py" "$RUN/upstream_app.py.new" # nobody may not read the checkout
  if app_pid >/dev/null; then
    if cmp -s "$RUN/upstream_app.py.new" "$RUN/upstream_app.py"; then rm -f "$RUN/upstream_app.py.new" && return 0; fi
    stop_pid "$RUN/app.pid" "$RUN/upstream_app.py"
  fi
  mv "$RUN/upstream_app.py.new" "$RUN/upstream_app.py"
  : >"$RUN/app.log"
  launch "$RUN/app.pid" "$RUN/app.log" ip netns exec "$NETNS" setpriv --reuid=nobody --regid=nogroup \
    --clear-groups --no-new-privs -- "$PY" "$RUN/upstream_app.py" "$APP" "$NET.4:7777"
}

start_nginx() {
  local d
  nginx_conf >"$RUN/nginx.conf.new"
  # the certificate's fingerprint: a renewed one restarts nginx
  openssl x509 -noout -fingerprint -sha256 -in "$U/tls/server.crt" | sed 's/^/# /' >>"$RUN/nginx.conf.new"
  if nginx_pid >/dev/null; then
    if cmp -s "$RUN/nginx.conf.new" "$RUN/nginx.conf"; then rm -f "$RUN/nginx.conf.new" && return 0; fi
    stop_pid "$RUN/nginx.pid" "$RUN/nginx.conf"
  fi
  mv "$RUN/nginx.conf.new" "$RUN/nginx.conf"
  for d in body proxy fastcgi uwsgi scgi; do install -d -m 0700 -o www-data -g www-data "$RUN/tmp/$d"; done
  : >"$RUN/access.log"
  : >"$RUN/error.log"
  : >"$RUN/nginx.log"
  chmod 0644 "$RUN/access.log" "$RUN/error.log" "$RUN/nginx.log"
  nginx -t -q -e "$RUN/error.log" -p "$RUN/" -c "$RUN/nginx.conf" 2>"$RUN/nginx-t.err" ||
    die "nginx rejects $RUN/nginx.conf: $(cat "$RUN/nginx-t.err")"
  rm -f "$RUN/nginx-t.err"
  launch "$RUN/nginx.pid" "$RUN/nginx.log" ip netns exec "$NETNS" "$(command -v nginx)" \
    -e "$RUN/error.log" -p "$RUN/" -c "$RUN/nginx.conf"
}

echo_answers() {
  [ "$(printf 'ping\n' | timeout 2 "$PY" -c 'import socket,sys
s = socket.create_connection((sys.argv[1], 7777), timeout=2); s.sendall(sys.stdin.buffer.read())
print(s.recv(100).decode().strip())' tcp.test.openshell 2>/dev/null)" = ping ]
}

healthy() {
  curl --noproxy '*' -sf -o /dev/null -m 2 http://api.test.openshell/ &&
    curl --noproxy '*' -sf -o /dev/null -m 2 --cacert "$U/tls/ca.crt" https://api.test.openshell/v1/models &&
    echo_answers
}

# the state is root's: refuse to trust anything else
check_state() {
  [ -d "$U" ] && [ ! -L "$U" ] && [ "$(stat -c %u "$U")" = 0 ] || return 1
}

cmd_start() {
  need_root "upstream.sh start"
  need ip nginx openssl curl setpriv flock setsid install "$PY"
  STATE="$(dirname "$U")"
  state_dir
  lock
  mkdir -p "$RUN" "$U/www"
  chmod 0755 "$U" "$RUN" "$U/www"
  net_setup
  tls_setup
  big_setup
  set_hosts add
  start_app
  start_nginx
  wait_until 15 "the upstream test hosts (see $RUN/error.log, $RUN/app.log)" healthy
}

cmd_stop() {
  need_root "upstream.sh stop"
  if [ -d "$U" ]; then
    STATE="$(dirname "$U")"
    state_dir
    lock
    stop_pid "$RUN/nginx.pid" "$RUN/nginx.conf"
    stop_pid "$RUN/app.pid" "$RUN/upstream_app.py"
  fi
  net_remove
  set_hosts remove
}

cmd_env() {
  check_state && nginx_pid >/dev/null && app_pid >/dev/null && netns_up && hosts_ok ||
    die "the upstream test hosts are down: run (as root) tests/env/upstream.sh start"
  cat <<EOF
export OS_UPSTREAM_HOST='api.test.openshell'
export OS_UPSTREAM_IP='$NET.2'
export OS_UPSTREAM_OTHER_HOST='other.test.openshell'
export OS_UPSTREAM_OTHER_IP='$NET.3'
export OS_UPSTREAM_TCP='tcp.test.openshell:7777'
export OS_UPSTREAM_SUBNET='$SUBNET'
export OS_UPSTREAM_HTTP_URL='http://api.test.openshell'
export OS_UPSTREAM_HTTPS_URL='https://api.test.openshell'
export OS_UPSTREAM_CA='$U/tls/ca.crt'
export OS_UPSTREAM_ACCESS_LOG='$RUN/access.log'
export OS_UPSTREAM_BIG_URL='https://files.test.openshell/big'
export OS_UPSTREAM_BIG_SIZE='$BIG_SIZE'
export OS_UPSTREAM_BIG_SHA256='$(cat "$U/www/big.sha256")'
EOF
}

cmd_status() {
  local n=0 pid
  if netns_up; then echo "netns $NETNS: present" && n=$((n + 1)); else echo "netns $NETNS: absent"; fi
  if hosts_ok; then echo "$HOSTS_FILE: names present" && n=$((n + 1)); else echo "$HOSTS_FILE: names missing"; fi
  check_state || { echo "state $U: missing (or not root's)" && exit 3; }
  if pid="$(nginx_pid)"; then echo "nginx: running (pid $pid)" && n=$((n + 1)); else echo "nginx: down"; fi
  if pid="$(app_pid)"; then echo "app: running (pid $pid)" && n=$((n + 1)); else echo "app: down"; fi
  if [ "$n" = 4 ] && healthy; then echo "probe: http, https, tcp echo answer" && exit 0; fi
  [ "$n" = 0 ] && exit 3
  exit 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2 && exit 2 ;;
esac
