"""Test tools for pycita, modelled on Hive's TestTools.

::

    from pycita.testtools import Network, CleanupPolicy
    network = Network(tmp_path / "chain", block_interval=0.3)
    network.run()
    node = network.node
    node.wait_for_block(3)
    node.api.get_balance(node.accounts()[0].address)
    node.kill_service("executor")
    network.close()

Under pytest use the ``network`` / ``node`` fixtures of the
``pycita_testtools`` plugin (:mod:`pycita.testtools.plugin`): they close the
network after the test, keeping every file when the test failed.
"""

from pycita.testtools.cleanup import CleanupPolicy
from pycita.testtools.network import Network
from pycita.testtools.node import Node, WaitTimeout
from pycita.testtools.snapshot import Snapshot, SnapshotToolFailed

__all__ = ["CleanupPolicy", "Network", "Node", "Snapshot", "SnapshotToolFailed", "WaitTimeout"]
