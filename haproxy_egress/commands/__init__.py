"""The read-only commands beside `run`: `explain` (with its DNS lookup) and `migrate`."""
