#!/usr/bin/env bash
# Make sure a local RabbitMQ broker is installed, running and answering.
#
# Idempotent and non-interactive (no stdin); meant to run as root in CI on a
# fresh Debian machine, and again and again on a developer machine.
#
#   1. installs the `rabbitmq-server` package with apt-get if it is missing;
#   2. if the node rabbit@localhost already answers, makes sure its RabbitMQ
#      application is running (a fault test may have left it `stop_app`ed);
#   3. otherwise starts it detached, bound to 127.0.0.1 only, and waits (bounded)
#      until it has fully booted;
#   4. checks that the AMQP port answers on 127.0.0.1.
#
# The node is always called rabbit@localhost so that nothing depends on the
# machine's hostname resolving.  Every rabbitmqctl call in pycita uses
# `-n rabbit@localhost` as well (see pycita/rabbit.py).
#
# Environment knobs (all optional):
#   RABBITMQ_START_TIMEOUT  seconds to wait for the broker to boot (default 90)
#   RABBITMQ_NODE_PORT      AMQP port (default 5672)
#
# Exit status: 0 when the broker answers, non-zero with a message on stderr otherwise.

set -u -o pipefail

export RABBITMQ_NODENAME=rabbit@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-5672}"
# Erlang distribution (epmd and the inter-node/CLI port 25672) also stays on loopback.
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -kernel inet_dist_use_interface {127,0,0,1}"
export DEBIAN_FRONTEND=noninteractive

START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-90}"
NODE="$RABBITMQ_NODENAME"

log() { echo "ensure_rabbitmq: $*" >&2; }

die() {
    log "ERROR: $*"
    for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/startup_log "/var/log/rabbitmq/${NODE}.log"; do
        if [ -s "$f" ]; then
            log "---- last lines of $f ----"
            tail -n 30 "$f" >&2 || true
        fi
    done
    exit 1
}

ctl() {
    # rabbitmqctl with a hard timeout so a wedged node can never hang CI.
    local secs="$1"
    shift
    timeout --kill-after=5 "$secs" rabbitmqctl -n "$NODE" "$@" </dev/null
}

amqp_port_open() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/${RABBITMQ_NODE_PORT}" </dev/null 2>/dev/null
}

app_running() {
    local out
    out="$(ctl 20 -q eval 'rabbit:is_running().' 2>/dev/null)" || return 1
    [ "$(echo "$out" | tr -d '[:space:]')" = "true" ]
}

# ---------------------------------------------------------------- install ---
if ! command -v rabbitmq-server >/dev/null 2>&1 || ! command -v rabbitmqctl >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        die "rabbitmq-server is not installed and this script is not running as root"
    fi
    log "installing rabbitmq-server with apt-get"
    # Do not let the package's init script start a broker under the default
    # (hostname-based) node name; we start our own below.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    apt_ok=0
    for attempt in 1 2 3; do
        if apt-get update -q </dev/null &&
            apt-get install -y -q --no-install-recommends rabbitmq-server </dev/null; then
            apt_ok=1
            break
        fi
        log "apt-get failed (attempt $attempt), retrying in 5 s"
        sleep 5
    done
    if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$apt_ok" = 1 ] || die "apt-get install rabbitmq-server failed"
    command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl not found after installing rabbitmq-server"
fi

mkdir -p /var/log/rabbitmq 2>/dev/null || true
if id rabbitmq >/dev/null 2>&1; then
    chown rabbitmq:rabbitmq /var/log/rabbitmq 2>/dev/null || true
fi

# ---------------------------------------------------------------- running? ---
if ctl 20 -q ping >/dev/null 2>&1; then
    if ! app_running; then
        log "node $NODE is up but the RabbitMQ application is stopped; running start_app"
        ctl 60 start_app >&2 || die "rabbitmqctl start_app failed"
    fi
else
    # A broker under another node name (e.g. the distribution's default
    # rabbit@<hostname>) would hold the AMQP port; stop it so ours can start.
    if amqp_port_open; then
        other="rabbit@$(hostname -s 2>/dev/null || hostname)"
        log "port ${RABBITMQ_NODE_PORT} is taken but $NODE does not answer; trying to stop node $other"
        timeout --kill-after=5 60 rabbitmqctl -n "$other" stop </dev/null >&2 ||
            die "AMQP port ${RABBITMQ_NODE_PORT} is in use by something that is not $NODE; stop it first"
        for _ in $(seq 1 30); do amqp_port_open || break; sleep 1; done
    fi
    log "starting RabbitMQ node $NODE on 127.0.0.1:${RABBITMQ_NODE_PORT}"
    # The Debian wrapper su's to the rabbitmq user; the environment is kept.
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 || die "rabbitmq-server -detached failed"
fi

# ------------------------------------------------------------------- wait ---
deadline=$((SECONDS + START_TIMEOUT))
until app_running && amqp_port_open; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "RabbitMQ node $NODE did not come up within ${START_TIMEOUT} s"
    fi
    sleep 1
done

# await_startup makes sure boot has fully finished (plugins, default user ...).
ctl 60 -q await_startup >/dev/null 2>&1 || die "rabbitmqctl await_startup failed"
log "RabbitMQ node $NODE is running (amqp://127.0.0.1:${RABBITMQ_NODE_PORT})"
exit 0
