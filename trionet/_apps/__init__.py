"""Layer 4: programs built on ``NetProcessor``: the TCP proxy, the CLI, worker processes."""
