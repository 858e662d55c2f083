"""``python -m agent_runtime``: the same command line as ``agent-runtime``."""

from agent_runtime.cli import main

main()
