"""What every config section is built from: `ConfigError`, and `ranged` fields whose range the loader checks."""

from __future__ import annotations

import operator
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and why.

    `keys`: the other settings a rule that spans several refused the first one for, so the loader can
    name where each came from (the message starts with the first key)."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


# A field's range, checked by the loader on every value a file or override gives (defaults are in range).
LIMITS = {"at_least": (operator.ge, "at least"), "above": (operator.gt, "more than"),
          "at_most": (operator.le, "at most"), "below": (operator.lt, "less than")}


def ranged(default: Any, **limits: float) -> Any:
    """A dataclass field with its default and its range: `ranged(16, at_least=1)`,
    `ranged(1.0, above=0, at_most=1)`. None (where the type allows it) is always in range."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"ranged: unknown limit(s) {sorted(unknown)}")
    return field(default=default, metadata={"limits": limits})
