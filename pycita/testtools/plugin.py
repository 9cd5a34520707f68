"""pytest plugin ``pycita_testtools`` (registered through the ``pytest11`` entry point).

Fixtures:

* ``rabbitmq_broker`` (session) -- runs ``scripts/ensure_rabbitmq.sh`` once;
  a broker that cannot be started fails the test (never skips it).
* ``amqp_url`` -- the AMQP URL of a fresh vhost for this test, deleted afterwards.
* ``network`` -- a running one-node :class:`~pycita.testtools.Network` with a
  0.3 s block interval under ``tmp_path``; closed after the test with
  REMOVE_ONLY_UNNEEDED_FILES when it passed, DO_NOT_REMOVE_FILES when it failed.
* ``node`` -- the network's node.

A hook stores each phase's report on the test item (``item.rep_setup``,
``item.rep_call``, ``item.rep_teardown``) so fixtures can tell whether the test failed.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycita.testtools.cleanup import CleanupPolicy
from pycita.testtools.network import DEFAULT_BLOCK_INTERVAL, Network
from pycita.testtools.node import Node

REPO = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = REPO / "scripts" / "ensure_rabbitmq.sh"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def has_failed(node: pytest.Item) -> bool:
    """Whether the setup or the call phase of the test ``node`` failed (so far)."""
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


def cleanup_policy_for(request: pytest.FixtureRequest,
                       passed: CleanupPolicy = CleanupPolicy.REMOVE_ONLY_UNNEEDED_FILES) -> CleanupPolicy:
    """The policy to close a test's network with: keep everything when the test failed."""
    return CleanupPolicy.DO_NOT_REMOVE_FILES if has_failed(request.node) else passed



@pytest.fixture(scope="session")
def rabbitmq_broker() -> None:
    """Install/start the local RabbitMQ broker once per session."""
    if os.environ.get("PYCITA_SKIP_ENSURE_RABBITMQ") == "1":
        return
    proc = subprocess.run(["bash", str(ENSURE_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{ENSURE_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)


@pytest.fixture
def amqp_url(rabbitmq_broker: None) -> Iterator[str]:
    """A fresh vhost for this test; yields its AMQP URL and deletes the vhost afterwards."""
    from pycita import rabbit

    vhost = f"test-{uuid.uuid4().hex[:12]}"
    rabbit.ensure_vhost(vhost)
    try:
        yield rabbit.amqp_url(vhost)
    finally:
        if not rabbit.is_running():  # a fault test may have stopped the application
            rabbit.start_broker()
        rabbit.delete_vhost(vhost)


@pytest.fixture
def network(request: pytest.FixtureRequest, tmp_path: Path, rabbitmq_broker: None) -> Iterator[Network]:
    """A running one-node network (block interval 0.3 s) under ``tmp_path``, closed after the test."""
    net = Network(tmp_path / "chain", nodes=1, block_interval=DEFAULT_BLOCK_INTERVAL)
    try:
        net.run()
    except BaseException:
        net.close(CleanupPolicy.DO_NOT_REMOVE_FILES)
        raise
    try:
        yield net
    finally:
        net.close(cleanup_policy_for(request))


@pytest.fixture
def node(network: Network) -> Node:
    """The running node of the ``network`` fixture."""
    return network.node
