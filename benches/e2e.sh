#!/usr/bin/env bash
# End-to-end benchmark: fhirgate side by side with nginx and HAProxy as TLS-terminating,
# re-encrypting reverse proxies, and with no proxy at all ("direct").
#
#   bash benches/e2e.sh            # full run: every scenario, medians of 5 interleaved rounds,
#                                  # and fhirgate's CPU over the best peer's round by round
#   bash benches/e2e.sh --quick    # smoke run: one repetition, smaller loads
#   bash benches/e2e.sh --instructions   # fhirgate's instructions per small exchange
#                                        # (callgrind: repeatable where CPU time is noisy)
#   bash benches/e2e.sh --train    # no measurement: the training load of benches/pgo.sh
#
# It measures the build the container image ships: profile-guided (benches/pgo.sh, built
# first and kept in target/pgo/). FHIRGATE=/path/to/fhirgate measures another build, such as
# plain `cargo build --release` (target/release/fhirgate).
#
# Every proxy speaks pooled HTTP/1.1 to the destination (nginx cannot do otherwise; HAProxy
# turns an HTTP/2 upstream's responses into HTTP/1.1 status lines without a reason phrase,
# which h2load cannot count), so fhirgate runs with `upstream_http2 = false`; a last row
# shows fhirgate with its default, HTTP/2 to the destination by ALPN.
#
# Same semantics for every proxy: TLS on both sides, upstream certificate verified against
# a private CA, upstream keep-alive, no buffering, no access log, one worker/thread pinned
# to CPU 1 (taskset). The destination (nginx serving static FHIR payloads) and the load
# generator (h2load; curl and sha256sum for the streams) share CPU 0. Proxy CPU is
# utime+stime from /proc/PID/stat over the run; peak memory is VmHWM. Every run checks its
# answers (h2load status counts, SHA-256 of the stream) so a fast wrong answer never counts.
# The small loads run twice: as fast as each target goes, and at a fixed offered rate.
#
# Installs nginx, haproxy and nghttp2-client (h2load) from Debian's packages when missing,
# and valgrind for --instructions.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0; INSTRUCTIONS=0; TRAIN=0
case "${1:-}" in
  --quick) QUICK=1 ;;
  --instructions) QUICK=1; INSTRUCTIONS=1 ;;
  --train) QUICK=1; TRAIN=1 ;;
  "") ;;
  *) echo "usage: bash benches/e2e.sh [--quick | --instructions | --train]" >&2; exit 2 ;;
esac
if [ $QUICK = 1 ]; then REPS=1; SMALL_N=4000; RATE_N=8000; BIG_N=100; TLS_N=300; STREAM_MB=64
else REPS=5; SMALL_N=100000; RATE_N=40000; BIG_N=600; TLS_N=2000; STREAM_MB=512; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need h2load || ! need curl || ! need openssl || ! need python3 \
   || ! need pgrep || ! need taskset || { [ $INSTRUCTIONS = 1 ] && ! need valgrind; }; then
  extra=(); [ $INSTRUCTIONS = 1 ] && extra=(valgrind)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy nghttp2-client \
    curl openssl python3 procps util-linux "${extra[@]}" >/dev/null
fi
systemctl stop nginx haproxy >/dev/null 2>&1 || true

# The proxy runs alone on one CPU (CPU 1 on a two-CPU machine); the destination and the load
# generator share another (CPU 0). With a single CPU to run on (a container build can be
# given one), the training still runs, everything on that CPU.
read -r LOAD_CPU PROXY_CPU < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[-1])')
if [ "$LOAD_CPU" = "$PROXY_CPU" ] && [ $TRAIN = 0 ]; then echo "warning: one CPU; proxy and load share it" >&2; fi

# FHIRGATE=/path/to/binary compares another build (e.g. the previous commit's).
if [ -z "${FHIRGATE:-}" ]; then
  bash benches/pgo.sh
  FHIRGATE=$PWD/target/pgo/fhirgate
fi
BUILD=$([ "$FHIRGATE" = "$PWD/target/pgo/fhirgate" ] && echo "profile-guided build" || echo "build $FHIRGATE")

# The destination and the three proxies listen here; a process left on one (KEEP=1 keeps the
# work folder and its destination running, for profiling by hand) would answer in their place.
DEST=19443; GW=18443; NGX=18444; HAP=18445
for port in $DEST $GW $NGX $HAP; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use (a destination or proxy left from an earlier run?); stop it first" >&2
    exit 1
  fi
done

W=$(mktemp -d /tmp/fhirgate-bench.XXXXXX)
PIDS=()
cleanup() { [ -n "${KEEP:-}" ] && return; for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; pkill -f "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
chmod 755 "$W"   # nginx workers run as nobody and must read the payloads

# --- PKI (throw-away): a private CA for the destination, a public CA for the proxies. ----
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.pem" -days 2 \
        -subj "/CN=$1" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null; }
leaf() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=localhost" 2>/dev/null
         openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days 2 \
           -extfile <(printf "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n") 2>/dev/null; }
ca private-ca; ca public-ca; leaf dest private-ca; leaf proxy public-ca
cat proxy.pem proxy.key > proxy-haproxy.pem
cat public-ca.pem private-ca.pem > client-ca.pem   # curl honours one --cacert only

# --- Payloads: a 2 KB Patient, a 1 MB Bundle, an NDJSON export. -------------------------
mkdir -p www/fhir/Patient www/fhir/bulk www/fhir/upload tmp
python3 - "$STREAM_MB" <<'PY'
import json, sys
name = {"family": "Chalmers", "given": ["Peter", "James"]}
p = {"resourceType": "Patient", "id": "example", "name": [name] * 12, "gender": "male", "birthDate": "1974-12-25",
     "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}] * 6}
open("www/fhir/Patient/example", "w").write(json.dumps(p)[:2048].ljust(2048))
entry = {"fullUrl": "https://localhost/fhir/Patient/example", "resource": p}
b = {"resourceType": "Bundle", "type": "searchset", "entry": []}
s = json.dumps(b)
while len(s) < 1 << 20:
    b["entry"].append(entry); s = json.dumps(b)
open("www/fhir/bundle", "w").write(s[: 1 << 20])
line = (json.dumps(p) + "\n").encode()
with open("www/fhir/bulk/export.ndjson", "wb") as f:
    for _ in range((int(sys.argv[1]) << 20) // len(line)):
        f.write(line)
PY
chmod -R a+rX www
chmod 777 www/fhir/upload tmp   # nginx workers (nobody) store uploads here
STREAM_SHA=$(sha256sum www/fhir/bulk/export.ndjson | cut -d' ' -f1)
STREAM_BYTES=$(stat -c %s www/fhir/bulk/export.ndjson)

# --- Destination: nginx on the load's CPU, TLS, HTTP/1.1 and HTTP/2. ---------------------
# nginx before 1.23.4 (Debian 12 has 1.22) offers only TLS 1.2 unless told otherwise; both
# nginx servers (and nginx's proxy_ssl_protocols) name TLS 1.3, so that every hop of every
# target is TLS 1.3 (the client-facing ones are checked below).
cat > dest.conf <<EOF
worker_processes 1; pid $W/dest.pid; error_log $W/dest.err; daemon off;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$DEST ssl http2; ssl_protocols TLSv1.2 TLSv1.3;
           ssl_certificate $W/dest.pem; ssl_certificate_key $W/dest.key;
           root $W/www; default_type application/fhir+json; client_body_temp_path $W/tmp;
           location /fhir/upload/ { dav_methods PUT; client_max_body_size 0; } } }
EOF
taskset -c "$LOAD_CPU" nginx -c "$W/dest.conf" -p "$W" & PIDS+=($!)

# --- The proxies, one at a time on the proxy's CPU. --------------------------------------
start_fhirgate() { UPSTREAM_HTTP2=false start_fhirgate_with; }
start_fhirgate_h2() { UPSTREAM_HTTP2=true start_fhirgate_with; }
start_fhirgate_with() {
  write_fhirgate_config
  TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$FHIRGATE" run --config "$W/fhirgate.toml" 2>"$W/fhirgate.err" & PROXY_PID=$!
  PORT=$GW
}
write_fhirgate_config() {
  cat > fhirgate.toml <<EOF
[[listeners]]
name = "public"
bind = "127.0.0.1:$GW"
  [[listeners.certificates]]
  cert = "proxy.pem"
  key = "proxy.key"
[[routes]]
name = "bench"
public_base = "https://localhost/fhir"
upstream = "https://localhost:$DEST/fhir"
upstream_ca = "private-ca.pem"
upstream_http2 = $UPSTREAM_HTTP2
[log]
level = "warn"
EOF
}
start_nginx() {
  cat > proxy-nginx.conf <<EOF
worker_processes 1; pid $W/ngx.pid; error_log $W/ngx.err; daemon off;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  upstream dest { server 127.0.0.1:$DEST; keepalive 64; }
  server { listen 127.0.0.1:$NGX ssl http2; ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $W/proxy.pem; ssl_certificate_key $W/proxy.key;
    location / { proxy_pass https://dest; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $W/private-ca.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_buffering off; proxy_request_buffering off; client_max_body_size 0; } } }
EOF
  taskset -c "$PROXY_CPU" nginx -c "$W/proxy-nginx.conf" -p "$W" & PROXY_PID=$!
  PORT=$NGX
}
start_haproxy() {
  cat > haproxy.cfg <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$HAP ssl crt $W/proxy-haproxy.pem alpn h2,http/1.1
  default_backend be
backend be
  http-reuse always
  server dest 127.0.0.1:$DEST ssl verify required ca-file $W/private-ca.pem sni str(localhost) verifyhost localhost alpn http/1.1
EOF
  taskset -c "$PROXY_CPU" haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.err" 2>&1 & PROXY_PID=$!
  PORT=$HAP
}
start_direct() { PROXY_PID=""; PORT=$DEST; }

wait_port() {  # port [tries of 50 ms]
  for _ in $(seq "${2:-100}"); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; tail -n 5 "$W"/*.err >&2; exit 1
}
stop_proxy() { [ -n "${PROXY_PID:-}" ] && { kill "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null || true; }; PROXY_PID=""; }

# CPU seconds (utime+stime) of a process and its children that are still running.
cpu_of() {
  [ -z "$1" ] && { echo 0; return; }
  local total=0 tick; tick=$(getconf CLK_TCK)
  for p in $1 $(pgrep -P "$1" || true); do
    [ -r /proc/$p/stat ] || continue
    total=$(( total + $(awk '{print $14 + $15}' /proc/$p/stat) ))
  done
  python3 -c "print($total / $tick)"
}
hwm_of() {
  [ -z "$1" ] && { echo 0; return; }
  local max=0
  for p in $1 $(pgrep -P "$1" || true); do
    local v; v=$(awk '/VmHWM/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v
  done
  echo $(( max / 1024 ))
}

# One h2load run; prints "reqs_per_s p50_ms p99_ms errors cpu_us_per_req hwm_mib".
run_h2load() {  # proxy-start-fn, h2load args...
  local start=$1; shift
  $start; wait_port "$PORT"
  local url; url=$(printf '%s' "$*" | sed "s/PORT/$PORT/g")
  local before; before=$(cpu_of "$PROXY_PID")
  # shellcheck disable=SC2086
  rm -f "$W/h2load.log"   # h2load appends to its log file
  taskset -c "$LOAD_CPU" h2load --log-file="$W/h2load.log" $url > "$W/h2load.out" 2>&1 || true
  cp "$W/h2load.out" "$W/h2load-$start.out"; cp "$W/h2load.log" "$W/h2load-$start.log"
  local after; after=$(cpu_of "$PROXY_PID")
  local hwm; hwm=$(hwm_of "$PROXY_PID")
  stop_proxy
  python3 - "$W/h2load.out" "$W/h2load.log" "$before" "$after" "$hwm" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
codes = re.search(r"status codes: (\d+) 2xx", out)
total, done, ok, failed, errored = map(int, m.groups()) if m else (0, 0, 0, 0, 1)
twoxx = int(codes.group(1)) if codes else 0
lat = sorted(int(l.split()[2]) for l in open(sys.argv[2]) if l.strip())
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
cpu = (float(sys.argv[4]) - float(sys.argv[3])) * 1e6 / max(ok, 1)
errors = total - twoxx
print(f"{float(rps.group(1)) if rps else 0:.0f} {p(0.5):.2f} {p(0.99):.2f} {errors} {cpu:.1f} {sys.argv[5]}")
PY
}

# One stream download through curl; prints "MiB_per_s sha_ok cpu_s_per_GiB hwm_mib".
run_stream() {
  local start=$1
  $start; wait_port "$PORT"
  local before; before=$(cpu_of "$PROXY_PID")
  local t0; t0=$(date +%s.%N)
  local sha; sha=$(run_stream_through "$PORT")
  local t1; t1=$(date +%s.%N)
  local after; after=$(cpu_of "$PROXY_PID")
  local hwm; hwm=$(hwm_of "$PROXY_PID")
  stop_proxy
  python3 -c "
mb=$STREAM_BYTES/1048576; dt=$t1-$t0; gib=$STREAM_BYTES/1073741824
print(f'{mb/dt:.0f} {\"yes\" if \"$sha\"==\"$STREAM_SHA\" else \"NO\"} {($after-$before)/gib:.2f} $hwm')"
}

# One stream upload through curl (PUT, stored by the destination); prints the same columns.
run_upload() {
  local start=$1
  $start; wait_port "$PORT"
  rm -f "$W/www/fhir/upload/export.ndjson"
  local before; before=$(cpu_of "$PROXY_PID")
  local t0; t0=$(date +%s.%N)
  local code; code=$(taskset -c "$LOAD_CPU" curl -s --http1.1 --cacert "$W/client-ca.pem" -o /dev/null -w '%{http_code}' \
      -T "$W/www/fhir/bulk/export.ndjson" "https://localhost:$PORT/fhir/upload/export.ndjson")
  local t1; t1=$(date +%s.%N)
  local after; after=$(cpu_of "$PROXY_PID")
  local hwm; hwm=$(hwm_of "$PROXY_PID")
  stop_proxy
  local sha; sha=$(sha256sum "$W/www/fhir/upload/export.ndjson" 2>/dev/null | cut -d' ' -f1)
  python3 -c "
mb=$STREAM_BYTES/1048576; dt=$t1-$t0; gib=$STREAM_BYTES/1073741824
ok = '$code' in ('201', '204') and '$sha' == '$STREAM_SHA'
print(f'{mb/dt:.0f} {\"yes\" if ok else \"NO\"} {($after-$before)/gib:.2f} $hwm')"
}

# After an untimed warm-up, REPS rounds of every target once, so a slow spell on a shared
# machine hits all targets alike rather than all repetitions of one. Prints "target<TAB>row"
# per target: each number is the median of its column over the rounds (one round's p99 or
# CPU can be an outlier while its req/s is not), except errors and peak RSS, the worst
# round's; "NO" in any round's correctness column makes the row's "NO".
interleaved() {  # runner, arguments after the target
  local runner=$1; shift
  local -A rows=()
  local t
  "$runner" start_direct "$@" >/dev/null   # warm-up: the destination's caches, page cache
  for _ in $(seq $REPS); do
    for t in $ALL; do rows[$t]+="$("$runner" "$t" "$@")"$'\n'; done
  done
  for t in $ALL; do
    printf '%s\t%s\n' "$t" "$(printf '%s' "${rows[$t]}" | python3 -c "$MEDIANS" "$runner")"
  done
  # The goal's measure, each fhirgate row's CPU over the best peer's, round by round: the
  # targets of one round run within a minute of each other, so a slow spell of the shared
  # machine moves both sides of a round's ratio, where it can move one column's median alone.
  local cpu_column; cpu_column=$([ "$runner" = run_h2load ] && echo 5 || echo 3)
  printf 'ratios\t%s\n' "$(for t in start_fhirgate start_fhirgate_h2 start_nginx start_haproxy; do
      printf '%s\n' "${rows[$t]}" | awk -v c="$cpu_column" 'NF {printf "%s ", $c}'; printf ';'
    done | python3 -c "$RATIOS")"
}
# Input: the CPU column of fhirgate, fhirgate with an HTTP/2 upstream, nginx and HAProxy,
# one round per number, separated by ";". Output: per fhirgate row, its ratios to the
# cheaper peer round by round and their median, the two rows separated by a tab.
RATIOS='
import statistics, sys
fg, fg2, ngx, hap = ([float(x) for x in part.split()] for part in sys.stdin.read().split(";")[:4])
best = [min(a, b) for a, b in zip(ngx, hap)]
def show(mine):
    per_round = [m / b for m, b in zip(mine, best) if b > 0]
    if not per_round:
        return "-"
    return " ".join(f"{r:.2f}" for r in per_round) + f" (median {statistics.median(per_round):.2f})"
print(f"{show(fg)}\t{show(fg2)}")'

# Columns of run_h2load: req/s p50 p99 errors cpu hwm; of the streams: MiB/s ok cpu hwm.
MEDIANS='
import sys
rounds = [line.split() for line in sys.stdin if line.strip()]
worst = {3, 5} if sys.argv[1] == "run_h2load" else {3}
def number(x):
    try:
        return float(x)
    except ValueError:
        return None
out = []
for i, column in enumerate(zip(*rounds)):
    if number(column[0]) is None:
        out.append("NO" if "NO" in column else column[0])
    else:
        ordered = sorted(column, key=number)
        out.append(ordered[-1] if i in worst else ordered[(len(ordered) - 1) // 2])
print(" ".join(out))'

ALL="start_direct start_fhirgate start_nginx start_haproxy start_fhirgate_h2"
name() { case $1 in start_direct) echo direct;; start_fhirgate) echo fhirgate;; start_fhirgate_h2) echo "fhirgate, HTTP/2 upstream";; start_nginx) echo "nginx $(nginx -v 2>&1 | sed 's/.*\///')";; start_haproxy) echo "HAProxy $(haproxy -v | head -1 | awk '{print $3}')";; esac; }

# --- Training load for profile-guided optimisation (benches/pgo.sh) ----------------------
# What a FHIR gateway serves, through both upstream protocols: small reads over HTTP/1.1 and
# HTTP/2, small writes (the static destination refuses them), unknown routes (the gateway's
# own OperationOutcome), large Bundles, a new TLS connection per request, and one download
# and one upload stream. Loads are smaller than the measured ones and checked, so a
# misconfigured run cannot train the build on error paths alone.
train() {
  local up load n class
  for up in false true; do
    UPSTREAM_HTTP2=$up start_fhirgate_with; wait_port $GW 600
    # count, expected status class, h2load options, path
    for load in "20000 2xx --h1 -c 20 /fhir/Patient/example" "20000 2xx -c 4 -m 8 /fhir/Patient/example" \
                "100 2xx --h1 -c 4 /fhir/bundle" "100 2xx -c 2 -m 4 /fhir/bundle" \
                "300 2xx --h1 -c 300 /fhir/Patient/example" \
                "2000 4xx -c 2 -m 4 -d $W/www/fhir/Patient/example /fhir/Patient/example" \
                "2000 4xx --h1 -c 4 /elsewhere/Patient/example"; do
      read -r n class load <<<"$load"
      # shellcheck disable=SC2086
      taskset -c "$LOAD_CPU" h2load -n "$n" ${load% *} "https://localhost:$GW${load##* }" > "$W/h2load.out" 2>&1 || true
      grep -Eq "status codes: .*\b$n $class" "$W/h2load.out" \
        || { echo "training load failed: $load" >&2; cat "$W/h2load.out" >&2; exit 1; }
    done
    [ "$(run_stream_through $GW)" = "$STREAM_SHA" ] || { echo "training download failed" >&2; exit 1; }
    taskset -c "$LOAD_CPU" curl -sf --http1.1 --cacert "$W/client-ca.pem" -o /dev/null -T "$W/www/fhir/bulk/export.ndjson" \
      "https://localhost:$GW/fhir/upload/export.ndjson" || { echo "training upload failed" >&2; exit 1; }
    stop_proxy   # the instrumented build writes its counts when it exits
  done
}
run_stream_through() {  # port → SHA-256 of the NDJSON export read through it
  taskset -c "$LOAD_CPU" curl -s --http1.1 --cacert "$W/client-ca.pem" "https://localhost:$1/fhir/bulk/export.ndjson" \
    | taskset -c "$LOAD_CPU" sha256sum | cut -d' ' -f1
}
if [ $TRAIN = 1 ]; then train; exit 0; fi

echo "# fhirgate end-to-end benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $("$FHIRGATE" --version) ($BUILD)"

# --- Instructions per exchange (callgrind) -----------------------------------------------
# CPU time on a shared machine varies by tens of percent between runs; instruction counts do
# not. fhirgate runs under callgrind; after a warm-up run (first upstream connection, lazy
# initialisation), two runs of different length are counted and their difference divided
# by the difference in exchanges, so the TLS handshakes of each run cancel out.
callgrind_ir() {  # pid → instructions since the last zeroing
  callgrind_control -d "$1" >/dev/null 2>&1
  local n=0 f
  for f in "$W"/cg.out.*; do [ "${f##*.}" -gt "$n" ] && n=${f##*.}; done
  awk '/^totals:/ {print $2}' "$W/cg.out.$n"
}
instructions_per_exchange() {  # upstream_http2, h2load args (with PORT)
  UPSTREAM_HTTP2=$1 write_fhirgate_config; shift
  rm -f "$W"/cg.out*
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" \
    "$FHIRGATE" run --config "$W/fhirgate.toml" 2>"$W/fhirgate.err" & PROXY_PID=$!
  wait_port $GW 600
  local url; url=$(printf '%s' "$*" | sed "s/PORT/$GW/g")
  local counts=()
  for n in 1000 1000 3000; do
    callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
    # shellcheck disable=SC2086
    taskset -c "$LOAD_CPU" h2load $url -n $n > "$W/h2load.out" 2>&1 || true
    grep -q "status codes: $n 2xx" "$W/h2load.out" || { echo "wrong answers:" >&2; cat "$W/h2load.out" >&2; exit 1; }
    counts+=("$(callgrind_ir "$PROXY_PID")")
  done
  stop_proxy
  python3 -c "print(f'{($(( counts[2] - counts[1] ))) / 2000:,.0f}')"
}
if [ $INSTRUCTIONS = 1 ]; then
  echo
  echo "| load | upstream | instructions per exchange |"
  echo "|---|---|---|"
  for up in true false; do
    label=$([ $up = true ] && echo "HTTP/2 (default)" || echo "HTTP/1.1")
    echo "| GET 2 KB, HTTP/1.1, 50 connections | $label | $(instructions_per_exchange $up "--h1 -c 50 https://localhost:PORT/fhir/Patient/example") |"
    echo "| GET 2 KB, HTTP/2, 10 connections × 5 streams | $label | $(instructions_per_exchange $up "-c 10 -m 5 https://localhost:PORT/fhir/Patient/example") |"
  done
  exit 0
fi
[ $QUICK = 1 ] && echo "(quick mode: one repetition, small loads — not for comparison)"

# Every target (and so the destination, which direct is) must speak TLS 1.3 to its clients;
# the proxies' clients towards the destination offer it too (rustls and OpenSSL by default,
# nginx through proxy_ssl_protocols).
for t in $ALL; do
  "$t"; wait_port "$PORT"
  protocol=$(openssl s_client -connect "127.0.0.1:$PORT" -servername localhost </dev/null 2>/dev/null \
    | sed -n 's/^New, \(TLSv[0-9.]*\),.*/\1/p')
  stop_proxy
  [ "$protocol" = TLSv1.3 ] || { echo "$(name "$t") negotiated ${protocol:-nothing}, not TLSv1.3" >&2; exit 1; }
done

scenario() {  # title, h2load args
  [[ "$1" =~ ${ONLY:-.} ]] || return 0
  echo; echo "## $1"; echo
  echo "| target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | proxy peak RSS MiB | % of direct |"
  echo "|---|---|---|---|---|---|---|---|"
  local direct_rps="" t row rps p50 p99 err cpu hwm
  local ratios=""
  while IFS=$'\t' read -r t row; do
    [ "$t" = ratios ] && { ratios=$row; continue; }
    read -r rps p50 p99 err cpu hwm <<<"$row"
    [ "$t" = start_direct ] && direct_rps=$rps
    local pct; pct=$(python3 -c "print(f'{100*$rps/max($direct_rps,1):.0f}')")
    if [ "$t" = start_direct ]; then cpu="-"; hwm="-"; fi
    echo "| $(name "$t") | $rps | $p50 | $p99 | $err | $cpu | $hwm | $pct |"
  done < <(interleaved run_h2load "$2")
  print_ratios "$ratios" "per request"
}
print_ratios() {  # "fhirgate<TAB>fhirgate, HTTP/2 upstream" (each "r1 r2 … (median m)"), unit
  echo
  echo "Proxy CPU $2 ÷ the best peer's in the same round: fhirgate $(cut -f1 <<<"$1"); fhirgate, HTTP/2 upstream $(cut -f2 <<<"$1")"
}

scenario "GET 2 KB Patient, HTTP/1.1, 50 keep-alive connections" "--h1 -c 50 -n $SMALL_N https://localhost:PORT/fhir/Patient/example"
scenario "GET 2 KB Patient, HTTP/2, 10 connections × 5 streams" "-c 10 -m 5 -n $SMALL_N https://localhost:PORT/fhir/Patient/example"
# The same loads at a fixed 8,000 req/s (h2load --rps), below every target's capacity: the
# rows above drive each proxy to its own maximum, where a faster proxy also loads the shared
# CPU 0 harder; here every proxy sees the same load, so p99 and CPU compare like for like.
scenario "GET 2 KB Patient, HTTP/1.1, 50 keep-alive connections, 8,000 req/s offered" "--h1 -c 50 --rps 160 -n $RATE_N https://localhost:PORT/fhir/Patient/example"
scenario "GET 2 KB Patient, HTTP/2, 10 connections × 5 streams, 8,000 req/s offered" "-c 10 -m 5 --rps 800 -n $RATE_N https://localhost:PORT/fhir/Patient/example"
scenario "GET 1 MB Bundle, HTTP/1.1, 10 connections" "--h1 -c 10 -n $BIG_N https://localhost:PORT/fhir/bundle"
scenario "GET 1 MB Bundle, HTTP/2, 4 connections × 4 streams" "-c 4 -m 4 -n $BIG_N https://localhost:PORT/fhir/bundle"
scenario "New TLS 1.3 connection per request (ECDSA P-256), HTTP/1.1" "--h1 -c $TLS_N -n $TLS_N https://localhost:PORT/fhir/Patient/example"

stream_scenario() {  # title, runner
  [[ "$1" =~ ${ONLY:-.} ]] || return 0
  echo; echo "## $1"; echo
  echo "| target | MiB/s | byte-exact | proxy CPU s per GiB | proxy peak RSS MiB | % of direct |"
  echo "|---|---|---|---|---|---|"
  local direct_mbs="" t row mbs ok cpu hwm pct
  local ratios=""
  while IFS=$'\t' read -r t row; do
    [ "$t" = ratios ] && { ratios=$row; continue; }
    read -r mbs ok cpu hwm <<<"$row"
    [ "$t" = start_direct ] && direct_mbs=$mbs
    pct=$(python3 -c "print(f'{100*$mbs/max($direct_mbs,1):.0f}')")
    if [ "$t" = start_direct ]; then cpu="-"; hwm="-"; fi
    echo "| $(name "$t") | $mbs | $ok | $cpu | $hwm | $pct |"
  done < <(interleaved "$2")
  print_ratios "$ratios" "per GiB"
}

stream_scenario "${STREAM_MB} MiB NDJSON download, one stream (curl, HTTP/1.1)" run_stream
stream_scenario "${STREAM_MB} MiB NDJSON upload, one stream (curl PUT, HTTP/1.1; the destination stores it)" run_upload
