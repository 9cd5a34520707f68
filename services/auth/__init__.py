"""The auth service: transaction admission, the persistent pool and the dedupe window."""
