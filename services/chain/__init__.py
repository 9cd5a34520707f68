"""The chain service: block store, block verification, sync and chain queries."""
