"""The JSON-RPC gateway service: HTTP JSON-RPC 2.0 for clients, the bus for everything else."""
