"""Training tools: they may import the node's ai modules, never the other way (tests/test_layout.py)."""
