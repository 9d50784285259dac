#!/usr/bin/env bash
# Side-by-side TURN benchmark: Debian's coturn `turnserver` and `continuum turn`
# under the same turnutils_uclient loads, on this machine, in one run.
# Reports per server and load: messages sent/echoed, loss, relayed packets/s,
# server CPU µs per relayed packet, peak RSS growth per allocation; then the
# saturation sweep (clients at -z 0 until loss appears). The tcp-relay load is
# RFC 6062 (client pairs relaying to each other's TCP relay).
#
#   bench/turn-vs-coturn.sh            # needs: cargo, coturn (apt-get install coturn)
#   QUICK=1 bench/turn-vs-coturn.sh    # smaller loads
#   ONLY=continuum:1 ...               # one server; continuum:N runs N relay threads
#                                      # (plain `continuum`: one per core)
#   ROUNDS=3 bench/turn-vs-coturn.sh   # all servers up at once, each load run on
#                                      # each server in turn, 3 rounds, then medians
#                                      # (this VM drifts; interleaving evens it out)
#   LOADS_ONLY="bulk audio-like" ...   # just these loads (by label), no sweep
set -euo pipefail
cd "$(dirname "$0")/.."
command -v turnserver >/dev/null || { echo "needs coturn: apt-get install -y coturn" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/continuum
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

PEER_PORT=13480
# Its own session too: a coturn tool that signals its process group must
# not end this script (seen: a run ending silently after one load).
setsid turnutils_peer -L 127.0.0.1 -p $PEER_PORT >/dev/null 2>&1 &

cat > "$WORK/continuum.toml" <<TOML
[server]
data_dir = "$WORK/data"
[log]
level = "warn"
[turn]
udp_listen = "127.0.0.1:13478"
tcp_listen = "127.0.0.1:13478"
realm = "test"
users = { u = "p" }
allow_peers = ["127.0.0.1/32"]
max_allocations_per_user = 100000
max_allocations_per_tenant = 100000
TOML

start_server() { # name → pid in $SERVER_PID
  case $1 in
    coturn)
      turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=13479 \
        --lt-cred-mech --user=u:p --realm=test --allow-loopback-peers --no-cli \
        --log-file=stdout --no-tls --no-dtls --min-port=49152 --max-port=65535 >"$WORK/coturn.log" 2>&1 &
      SERVER_PID=$!; PORT=13479 ;;
    continuum*)
      local threads=0; [[ $1 == continuum:* ]] && threads=${1#continuum:}
      # Each continuum variant on its own port, so they can run side by side.
      PORT=$(( 13470 + threads ))
      CONTINUUM_TURN__THREADS=$threads CONTINUUM_TURN__UDP_LISTEN=127.0.0.1:$PORT CONTINUUM_TURN__TCP_LISTEN=127.0.0.1:$PORT \
        $BIN --config "$WORK/continuum.toml" turn >"$WORK/continuum-$threads.log" 2>&1 &
      SERVER_PID=$! ;;
  esac
  # (turnutils_stunclient signals its whole process group, so it is not used here.)
  sleep 1
  kill -0 $SERVER_PID 2>/dev/null || { echo "$1 did not start:" >&2; cat "$WORK"/*.log >&2; exit 1; }
}

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
rss_kib() { awk '/VmRSS/{print $2}' /proc/$1/status; }
TICK=$(getconf CLK_TCK)

# run_load server label uclient-args... → one result line
run_load() {
  local name=$1 label=$2; shift 2
  local c0 r0 peak t0 t1 c1 out sent recv lost clients attempt
  # A uclient that fails leaves no totals. It does so by its own choice now
  # and then: it binds two channels with random numbers and exits when they
  # collide (a 400 from either server). Such a run is tried once more; if
  # that fails too, the line shows 0 sent and the run goes on.
  for attempt in 1 2; do
    peak=0
    c0=$(cpu_ticks $SERVER_PID); r0=$(rss_kib $SERVER_PID); t0=$(date +%s.%N)
    # Its own session: coturn's tools may signal their whole process group.
    setsid turnutils_uclient "$@" -u u -w p -e 127.0.0.1 -r $PEER_PORT -p $PORT 127.0.0.1 >"$WORK/uc.log" 2>&1 &
    local uc=$!
    while kill -0 $uc 2>/dev/null; do
      local r; r=$(rss_kib $SERVER_PID); (( r > peak )) && peak=$r; sleep 0.2
    done
    wait $uc || true
    t1=$(date +%s.%N)
    c1=$(cpu_ticks $SERVER_PID)
    sent=$(grep -o 'tot_send_msgs=[0-9]*' "$WORK/uc.log" | tail -1 | cut -d= -f2 || true); sent=${sent:-0}
    recv=$(grep -o 'tot_recv_msgs=[0-9]*' "$WORK/uc.log" | tail -1 | cut -d= -f2 || true); recv=${recv:-0}
    lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' "$WORK/uc.log" | tail -1 | sed 's/Total lost packets //' || true); lost=${lost:-"? (?)"}
    [[ $sent != 0 ]] && break
    echo "  ($name, $label: turnutils_uclient failed (attempt $attempt): $(grep -m1 -i 'error' "$WORK/uc.log" || tail -1 "$WORK/uc.log"))" >&2
  done
  clients=$(printf '%s\n' "$@" | awk 'p{print; exit} /^-m$/{p=1}')
  # Each message crosses the server twice (client→peer, peer→client).
  awk -v n="$name" -v l="$label" -v s="$sent" -v r="$recv" -v lost="$lost" \
      -v cpu=$(( c1 - c0 )) -v tick=$TICK -v t="$(echo "$t1 - $t0" | bc)" \
      -v peak=$peak -v r0=$r0 -v m="${clients:-1}" 'BEGIN {
    relayed = s + r; secs = cpu / tick
    printf "%-12s %-34s %8d %8d %-16s %10.0f %9.2f %10.1f\n", n, l, s, r, lost, relayed / t, (relayed ? secs * 1e6 / relayed : 0), (peak > r0 ? (peak - r0) / m : 0)
  }'
}

LOADS=(
  "bulk -m 40 -n 5000 -l 170 -z 1:-c -m 40 -n 5000 -l 170 -z 1"
  "audio-like -m 100 -n 500 -l 200 -z 20:-c -m 100 -n 500 -l 200 -z 20"
  "tcp-relay -T -m 40 -n 500 -l 170:-T -m 40 -n 500 -l 170"
)
SWEEP=(20 50 80 120 160 240 320)
if [[ ${QUICK:-} ]]; then
  LOADS=("bulk -m 20 -n 1000 -l 170 -z 1:-c -m 20 -n 1000 -l 170 -z 1" "audio-like -m 50 -n 200 -l 200 -z 20:-c -m 50 -n 200 -l 200 -z 20"
    "tcp-relay -T -m 10 -n 100 -l 170:-T -m 10 -n 100 -l 170")
  SWEEP=(20 50)
fi

if [[ ${LOADS_ONLY:-} ]]; then
  kept=()
  for entry in "${LOADS[@]}"; do
    for want in $LOADS_ONLY; do [[ ${entry%% *} == "$want" ]] && kept+=("$entry"); done
  done
  LOADS=("${kept[@]}"); SWEEP=()
fi

warm_up() { turnutils_uclient -c -m 4 -n 20 -l 170 -z 1 -u u -w p -e 127.0.0.1 -r $PEER_PORT -p $PORT 127.0.0.1 >/dev/null 2>&1 || true; }

printf "%-12s %-34s %8s %8s %-16s %10s %9s %10s\n" server load sent echoed "lost (%)" "relayed/s" "µs CPU/pk" "KiB/alloc"
if [[ ${ROUNDS:-} ]]; then
  declare -A PID_OF PORT_OF
  SERVERS=(${ONLY:-coturn continuum:1 continuum})
  for server in "${SERVERS[@]}"; do
    start_server $server; PID_OF[$server]=$SERVER_PID; PORT_OF[$server]=$PORT; warm_up
  done
  for m in "${SWEEP[@]}"; do LOADS+=("saturation -m $m -n 1000 -l 170 -z 0:-c -m $m -n 1000 -l 170 -z 0"); done
  for ((round = 1; round <= ROUNDS; round++)); do
    for entry in "${LOADS[@]}"; do
      label=${entry%%:*}; args=${entry#*:}
      for server in "${SERVERS[@]}"; do
        SERVER_PID=${PID_OF[$server]}; PORT=${PORT_OF[$server]}
        # shellcheck disable=SC2086
        run_load $server "$label" $args | tee -a "$WORK/results"
      done
    done
  done
  echo; echo "medians over $ROUNDS rounds (µs CPU/pk; share of coturn's median):"
  awk -v servers="${SERVERS[*]}" '$(NF - 6) == 0 { next } {
      server = $1; label = $2; for (i = 3; i <= NF - 7; i++) label = label " " $i
      key = server SUBSEP label; n[key]++; v[key, n[key]] = $(NF - 1)
      lost = $(NF - 4) + 0; if (!(key in worst) || lost > worst[key]) worst[key] = lost
      if (!(label in seen)) { seen[label] = 1; order[++labels] = label }
    }
    function median(key,   i, j, t, a, m) {
      m = n[key]; for (i = 1; i <= m; i++) a[i] = v[key, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
      split(servers, s, " ")
      for (l = 1; l <= labels; l++) {
        label = order[l]; base = ((("coturn" SUBSEP label) in n) ? median("coturn" SUBSEP label) : 0)
        for (i = 1; i in s; i++) {
          key = s[i] SUBSEP label; if (!(key in n)) continue
          med = median(key)
          printf "%-12s %-38s %7.2f %6s  most lost in a round: %d\n", s[i], label, med, (base ? sprintf("%.0f%%", 100 * med / base) : ""), worst[key]
        }
      }
    }' "$WORK/results"
  for server in "${SERVERS[@]}"; do kill ${PID_OF[$server]} 2>/dev/null || true; done
  echo "(µs CPU/pk: server user+system CPU per relayed packet, both directions; KiB/alloc: peak RSS growth / clients)"
  exit 0
fi
for server in ${ONLY:-coturn continuum:1 continuum}; do
  start_server $server
  # Warm-up (not reported): lazily built per-thread state (buffers, tables)
  # is not charged to the first load's allocations, for either server.
  warm_up
  for entry in "${LOADS[@]}"; do
    label=${entry%%:*}; args=${entry#*:}
    # shellcheck disable=SC2086
    run_load $server "$label" $args
  done
  for m in "${SWEEP[@]}"; do
    run_load $server "saturation -m $m -n 1000 -l 170 -z 0" -c -m $m -n 1000 -l 170 -z 0
  done
  kill $SERVER_PID; wait $SERVER_PID 2>/dev/null || true
done
echo "(µs CPU/pk: server user+system CPU per relayed packet, both directions; KiB/alloc: peak RSS growth / clients)"
