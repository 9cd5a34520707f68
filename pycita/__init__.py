"""pycita: a CITA-style blockchain node with verified snapshot and restore.

This package is the shared library every service imports: types and RLP
codecs, crypto, storage, the state trie, the message bus client, the
snapshot file format and the test tools. Services never import each other.
"""

__version__ = "0.1.0"
