"""Administration of the local RabbitMQ broker (vhosts, stop/start) via ``rabbitmqctl``.

Every node gets its own vhost (see DESIGN.md §3); the node CLI creates it with
:func:`ensure_vhost` and tests delete theirs with :func:`delete_vhost`.  The
broker itself is installed and started by ``scripts/ensure_rabbitmq.sh``; it
always runs as the Erlang node ``rabbit@localhost`` (so nothing depends on the
hostname resolving) and every ``rabbitmqctl`` call here passes
``-n rabbit@localhost`` explicitly (override with ``PYCITA_RABBIT_NODE``).

:func:`stop_broker` / :func:`start_broker` are for fault tests: they use
``rabbitmqctl stop_app`` / ``start_app``, which stop and start only the
RabbitMQ application inside the running Erlang VM.  That takes about a second
(a full ``rabbitmq-server`` restart takes five or more), closes every client
connection exactly like a broker crash would, and keeps durable queues and
persistent messages.  The Erlang node stays up, so ``rabbitmqctl`` keeps working
while the application is stopped.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.parse

from pycita.errors import PycitaError

log = logging.getLogger(__name__)

NODE = os.environ.get("PYCITA_RABBIT_NODE", "rabbit@localhost")
"""The Erlang node name of the broker."""

DEFAULT_TIMEOUT = 60.0
"""Seconds a single ``rabbitmqctl`` call may take before :class:`BrokerError` is raised."""


class BrokerError(PycitaError):
    """Raised when a ``rabbitmqctl`` command fails, times out or cannot be run at all.

    ``args`` of the failed command, its ``returncode`` (``None`` on timeout or
    when it could not be started) and its ``stderr`` are kept as attributes.
    """

    def __init__(self, message: str, *, command: list[str] | None = None,
                 returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.command = command or []
        self.returncode = returncode
        self.stderr = stderr


def rabbitmqctl(*args: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``rabbitmqctl -n <node> <args>`` and return its stdout.

    Raises :class:`BrokerError` (with rabbitmqctl's stderr in the message) when
    the command exits non-zero, takes longer than ``timeout`` seconds or is not
    installed.
    """
    cmd = ["rabbitmqctl", "-n", NODE, *args]
    env = dict(os.environ, RABBITMQ_NODENAME=NODE)
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except FileNotFoundError as exc:
        raise BrokerError(
            "rabbitmqctl not found; run scripts/ensure_rabbitmq.sh to install and start RabbitMQ",
            command=cmd) from exc
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise BrokerError(f"{' '.join(cmd)} timed out after {timeout:.0f} s: {stderr.strip()}",
                          command=cmd, stderr=stderr) from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())
        raise BrokerError(f"{' '.join(cmd)} failed with exit status {proc.returncode}: {detail}",
                          command=cmd, returncode=proc.returncode, stderr=proc.stderr)
    return proc.stdout


def list_vhosts() -> list[str]:
    """Return the names of all vhosts of the broker."""
    out = rabbitmqctl("-q", "list_vhosts", "name", "--no-table-headers")
    return [line for line in out.splitlines() if line.strip()]


def ensure_vhost(name: str) -> None:
    """Create vhost ``name`` if it does not exist and give user ``guest`` full rights on it.

    Idempotent; safe to call on every node start.
    """
    if not name:
        raise BrokerError("vhost name must not be empty")
    try:
        rabbitmqctl("add_vhost", name)  # idempotent on RabbitMQ >= 3.8
    except BrokerError:
        # Older brokers refuse an existing vhost; so does a lost creation race.
        if name not in list_vhosts():
            raise
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` with all its exchanges, queues and messages; no error if it is absent."""
    try:
        rabbitmqctl("delete_vhost", name)
    except BrokerError:
        if name in list_vhosts():
            raise
        return
    log.info("deleted RabbitMQ vhost %s", name)


def amqp_url(vhost: str, host: str = "127.0.0.1", port: int = 5672,
             user: str = "guest", password: str = "guest") -> str:
    """Return the AMQP URL of ``vhost`` on the broker, with the vhost URL-encoded.

    >>> amqp_url("node/0")
    'amqp://guest:guest@127.0.0.1:5672/node%2F0'
    """
    quoted = urllib.parse.quote(vhost, safe="")
    return (f"amqp://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
            f"@{host}:{port}/{quoted}")


def is_running() -> bool:
    """Return whether the RabbitMQ application (not just the Erlang node) is running."""
    try:
        out = rabbitmqctl("-q", "eval", "rabbit:is_running().", timeout=20)
    except BrokerError:
        return False
    return out.strip() == "true"


def stop_broker(timeout: float = DEFAULT_TIMEOUT) -> None:
    """Stop the RabbitMQ application (``rabbitmqctl stop_app``); every client connection drops.

    The Erlang node keeps running, so :func:`start_broker` can bring it back in
    about a second.  Durable queues and persistent messages survive.
    """
    rabbitmqctl("stop_app", timeout=timeout)
    log.warning("RabbitMQ application stopped (stop_app)")


def start_broker(timeout: float = DEFAULT_TIMEOUT) -> None:
    """Start the RabbitMQ application again (``rabbitmqctl start_app``) and wait until it has booted."""
    rabbitmqctl("start_app", timeout=timeout)
    rabbitmqctl("await_startup", timeout=timeout)
    log.warning("RabbitMQ application started (start_app)")
