"""Fixtures giving each test a real RabbitMQ vhost (the lead will move them into a pytest plugin)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycita import rabbit

REPO = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = REPO / "scripts" / "ensure_rabbitmq.sh"


@pytest.fixture(scope="session")
def rabbitmq_broker() -> None:
    """Install/start the local broker once per session (never skips: a missing broker is a failure)."""
    proc = subprocess.run(["bash", str(ENSURE_SCRIPT)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{ENSURE_SCRIPT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture
def amqp_url(rabbitmq_broker: None) -> Iterator[str]:
    """A fresh vhost for this test; yields its AMQP URL and deletes the vhost afterwards."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    rabbit.ensure_vhost(vhost)
    try:
        yield rabbit.amqp_url(vhost)
    finally:
        try:
            rabbit.delete_vhost(vhost)
        except rabbit.BrokerError:
            if rabbit.is_running():
                raise
            rabbit.start_broker()  # a fault test left the application stopped
            rabbit.delete_vhost(vhost)
