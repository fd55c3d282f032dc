"""Per-connection state behind an interface: `base.py` (what routing asks), `memory.py` (this process)."""
