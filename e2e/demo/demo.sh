#!/usr/bin/env bash
# Shoal demo: one host in a network namespace of its own, a 3-replica
# service of the test app, each replica answering over HTTP.
#   ./e2e/demo/demo.sh        start (after `make build images`)
#   ./e2e/demo/demo.sh stop   stop and remove everything it made
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
bin="$top/bin"
NS=shoal-demo
STATE=${SHOAL_DEMO_DIR:-/tmp/shoal-demo}
DATA="$STATE/data" RUN="$STATE/run"
SOCK="$RUN/shoal.sock"
CGROUP=/shoal-demo
shoal() { "$bin/shoal" --host "unix://$SOCK" "$@"; }
in_ns() { nsenter --net=/run/netns/$NS -- "$@"; }

stop() {
  # Best effort: every step runs even when an earlier one found nothing.
  set +e +o pipefail
  if [ -S "$SOCK" ] && shoal service ls -q >/dev/null 2>&1; then
    for s in $(shoal service ls -q); do shoal service rm "$s" >/dev/null || true; done
    for _ in $(seq 1 50); do
      [ -z "$(runc --root "$RUN/runc" list -q 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  if [ -f "$STATE/shoald.pid" ]; then
    pid=$(cat "$STATE/shoald.pid")
    kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$STATE/shoald.pid"
  fi
  for f in "$RUN"/containers/*/shim.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  for id in $(runc --root "$RUN/runc" list -q 2>/dev/null); do runc --root "$RUN/runc" delete -f "$id" || true; done
  grep -o " $STATE[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
  for d in /sys/fs/cgroup/*"$CGROUP"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  ip netns del $NS 2>/dev/null
  rm -rf "$STATE"
  if ip netns list | grep -qw $NS; then
    echo "demo: could not remove network namespace $NS" >&2; return 1
  fi
  echo "Shoal demo stopped and cleaned up."
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates a network namespace and runs runc)" >&2; exit 1; }
if ip netns list | grep -qw $NS; then
  echo "demo: already running (namespace $NS exists). Stop it first: make demo-stop" >&2; exit 1
fi

mkdir -p "$STATE"
ip netns add $NS
ip -n $NS link set lo up
echo "==> starting shoald in network namespace $NS (log: $STATE/shoald.log)"
nsenter --net=/run/netns/$NS -- "$bin/shoald" --data-dir "$DATA" --run-dir "$RUN" \
  --cgroup-parent $CGROUP >"$STATE/shoald.log" 2>&1 &
echo $! >"$STATE/shoald.pid"
for _ in $(seq 1 100); do shoal info >/dev/null 2>&1 && break; sleep 0.1; done
shoal info >/dev/null || { echo "demo: shoald did not start; see $STATE/shoald.log" >&2; exit 1; }

echo "==> shoal cluster init"; shoal cluster init
echo "==> shoal image load -i bin/images/testapp.tar"; shoal image load -i "$bin/images/testapp.tar"
echo "==> shoal service create --name web --replicas 3 shoal/testapp:latest"
shoal service create --name web --replicas 3 shoal/testapp:latest
echo "==> shoal service ls"; shoal service ls
echo "==> shoal service ps web"; shoal service ps web
echo "==> each replica answers:"
for ip in $(shoal service ps web --format json | grep -o '"[0-9.]*/[0-9]*"' | tr -d '"' | cut -d/ -f1); do
  printf '  %-15s -> ' "$ip"; in_ns curl -sS --max-time 5 "http://$ip:8080/"
done
cat <<MSG

The demo cluster is running. Try:
  $bin/shoal --host unix://$SOCK service scale web=5
  $bin/shoal --host unix://$SOCK service logs web
  nsenter --net=/run/netns/$NS curl http://<task address>:8080/
Stop it and remove everything it made with:  make demo-stop
MSG
