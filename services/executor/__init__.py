"""The executor service: transaction execution, account state and state queries."""
