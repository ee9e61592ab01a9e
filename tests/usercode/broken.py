"""A module whose import fails, as a user's half-written file would."""

raise RuntimeError("this module is broken on purpose")
