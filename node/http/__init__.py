"""What every HTTP server of a node shares: connection and rate limits, and JSON errors."""
