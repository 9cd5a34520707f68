"""The consensus service: proposes blocks, votes and builds quorum proofs (see engine.py)."""
