"""agent-runtime."""
