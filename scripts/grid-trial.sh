#!/usr/bin/env bash
# A trial grid of N relay nodes (3 by default) on loopback, against the local Redis and
# PostgreSQL. Each node gets its own data dir and config under a fresh temporary folder;
# the grid gets its own Redis key prefix and PostgreSQL schema, so a trial never touches
# anything else. Prints one JSON line per node, then {"event":"ready"}; stops the nodes
# (and removes the trial's keys, schema and folder) when interrupted or terminated.
#
#   scripts/grid-trial.sh [N]
#
# Settings (environment):
#   TSUNAGU_RELAY        the tsunagu-relay binary (default: target/release, then target/debug,
#                        else it is built with cargo)
#   TSUNAGU_REDIS_URL    default redis://127.0.0.1:6379
#   TSUNAGU_POSTGRES_URL default postgres://postgres@127.0.0.1:5432/test
#   TSUNAGU_TRIAL_KEEP=1 keep the folder (configs, logs) after stopping
set -euo pipefail

n="${1:-3}"
if ! [[ "$n" =~ ^[0-9]+$ ]] || (( n < 1 || n > 26 )); then
    echo "usage: $0 [N]   (1 to 26 nodes; default 3)" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
redis_url="${TSUNAGU_REDIS_URL:-redis://127.0.0.1:6379}"
pg_url="${TSUNAGU_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

relay="${TSUNAGU_RELAY:-}"
if [[ -z "$relay" ]]; then
    for candidate in "$root/target/release/tsunagu-relay" "$root/target/debug/tsunagu-relay"; do
        if [[ -x "$candidate" ]]; then relay="$candidate"; break; fi
    done
fi
if [[ -z "$relay" ]]; then
    echo "building tsunagu-relay (release) ..." >&2
    (cd "$root" && cargo build --release --locked -p tsunagu-relay >&2)
    relay="$root/target/release/tsunagu-relay"
fi

dir="$(mktemp -d -t tsunagu-grid.XXXXXX)"
tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
prefix="trial-$tag:"
schema="trial_$tag"
pids=()
names=()

stop() {
    trap - INT TERM EXIT
    local live=()
    for pid in "${pids[@]}"; do [[ -n "$pid" ]] && live+=("$pid"); done
    for pid in "${live[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # A node that has not stopped 15 s after SIGTERM is killed.
    ( sleep 15; for pid in "${live[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done ) &
    local watchdog=$!
    for pid in "${live[@]}"; do wait "$pid" 2>/dev/null || true; done
    kill "$watchdog" 2>/dev/null || true
    if command -v redis-cli >/dev/null; then
        redis-cli -u "$redis_url" --scan --pattern "${prefix}*" 2>/dev/null |
            xargs -r -n 500 redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
    fi
    if command -v psql >/dev/null; then
        psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    fi
    if [[ "${TSUNAGU_TRIAL_KEEP:-}" == 1 ]]; then
        echo "kept $dir" >&2
    else
        rm -rf "$dir"
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What every node shares: the endpoint CA, the cluster CA and the key files.
"$relay" grid init "$dir/shared" >/dev/null

# The address a node announced for `service` on its stdout, once it is up.
announced() {
    local out="$1" service="$2"
    # Nothing yet is not an error: the node is still starting.
    { grep '"event":"listening"' "$out" || true; } | { grep "\"service\":\"$service\"" || true; } |
        head -n1 | sed -n 's/.*"addr":"\([^"]*\)".*/\1/p'
}

letters=(a b c d e f g h i j k l m n o p q r s t u v w x y z)
for i in $(seq 0 $((n - 1))); do
    name="${letters[$i]}"
    node="$dir/$name"
    mkdir -p "$node"
    cat >"$node/relay.toml" <<EOF
data_dir = "$node/data"
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[database]
url = "$pg_url"
schema = "$schema"

[tls]
ca_file = "$dir/shared/ca.pem"
ca_key_file = "$dir/shared/ca.key"

[secrets]
key_file = "$dir/shared/keys/secrets.key"
audit_key_file = "$dir/shared/keys/audit.key"
signing_key_file = "$dir/shared/keys/audit-signing.key"

[cluster]
node = "$name"
redis_url = "$redis_url"
key_prefix = "$prefix"
quic_listen = "127.0.0.1:0"
ca_file = "$dir/shared/cluster-ca.pem"
ca_key_file = "$dir/shared/cluster-ca.key"
EOF
    # One after the other: the first node creates the schema and runs the migrations.
    "$relay" serve --config "$node/relay.toml" >"$node/stdout.jsonl" 2>"$node/relay.log" &
    pids+=($!)
    names+=("$name")
    relay_addr=""
    admin_addr=""
    for _ in $(seq 1 300); do
        relay_addr="$(announced "$node/stdout.jsonl" relay)"
        admin_addr="$(announced "$node/stdout.jsonl" admin)"
        [[ -n "$relay_addr" && -n "$admin_addr" ]] && break
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "node $name did not start; its log:" >&2
            tail -n 20 "$node/relay.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [[ -z "$relay_addr" || -z "$admin_addr" ]]; then
        echo "node $name did not announce its listeners within 30 s; its log: $node/relay.log" >&2
        exit 1
    fi
    printf '{"event":"node","name":"%s","relay":"%s","admin":"%s","pid":%d,"config":"%s","ca":"%s"}\n' \
        "$name" "$relay_addr" "$admin_addr" "${pids[$i]}" "$node/relay.toml" "$dir/shared/ca.pem"
done
echo '{"event":"ready"}'

# Until interrupted; a node that stops on its own is reported.
while true; do
    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            printf '{"event":"node_exited","name":"%s","pid":%d}\n' "${names[$i]}" "$pid"
            pids[$i]=""
        fi
    done
    sleep 1
done
