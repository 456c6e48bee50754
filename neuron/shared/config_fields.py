"""The field checker both servers' config files go through (`neuron.toml`, `cortex.toml`, the models file).

A `Section` is one table of a file together with where it is, so every error names the file, the
table, the key and what was expected, range included:
`cortex.toml: [gateway].poll_interval_s: expected a number of seconds > 0, got -1`.

The rules for 0 and ranges, the same on both servers:
- a duration that bounds a wait (a timeout, an interval, a keep-alive, a time to live) is > 0: 0
  would mean "give up at once" or "spin", never something an operator wants;
- a size that bounds something (a body, a store) is > 0 too, for the same reason;
- a grace (`shutdown_grace_s`) may be 0: "stop at once, cancel what is in flight" is a real choice;
- a count where 0 has no meaning (connections per client, failed polls before down, requests at once)
  is >= 1; a count where 0 means "none" (a queue, stored responses) or "no limit" (a key's rate) is >= 0
  and says so in the docs;
- numbers are finite (TOML allows inf and nan; neither is a bound);
- no value means "the default": 0 never does, so `max_connections_per_client = 0` is refused with the
  valid range rather than quietly read as the default (the neuron did that) or as 0 (the gateway did).
`SERVER_LIMITS` holds the keys both servers have, so one rule cannot drift apart from the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StartupError(Exception):
    """Something the user can fix before a server serves (a bad config, a port in use, a GPU not there).
    The commands print its message as one line and exit 2; any other exception keeps its traceback."""


class ConfigError(StartupError):
    """A bad configuration value; the message names the file and the key."""


# Bounds, as keyword arguments of `Section.opt_int` / `opt_float`; see the module docstring for which is which.
POSITIVE = {"above": 0}
NON_NEGATIVE = {"minimum": 0}
AT_LEAST_ONE = {"minimum": 1}

# The keys both servers read, with one rule each.
SERVER_LIMITS = {
    "keepalive_s": POSITIVE, "shutdown_grace_s": NON_NEGATIVE, "max_body_mb": POSITIVE, "body_timeout_s": POSITIVE,
    "idle_timeout_s": POSITIVE, "write_timeout_s": POSITIVE, "max_connections_per_client": AT_LEAST_ONE,
}

_UNITS = {"_s": " of seconds", "_mb": " of MiB"}  # the noun a number's key implies, by its suffix


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def bounds_text(above=None, minimum=None, maximum=None) -> str:
    """The range in words, as an error shows it: " > 0", " >= 1", " from 1 to 992"."""
    if minimum is not None and maximum is not None:
        return f" from {_number(minimum)} to {_number(maximum)}"
    words = [f" {sign} {_number(bound)}" for sign, bound in ((">", above), (">=", minimum), ("<=", maximum))
             if bound is not None]
    return "".join(words)


def _in_bounds(value, above=None, minimum=None, maximum=None) -> bool:
    return math.isfinite(value) and (above is None or value > above) and (minimum is None or value >= minimum) \
        and (maximum is None or value <= maximum)


def choices_text(choices) -> str:
    quoted = [f'"{c}"' for c in choices]
    return " or ".join(quoted) if len(quoted) == 2 else "one of " + ", ".join(quoted)


@dataclass(frozen=True)
class Section:
    """One table of a config file: its values, the file (relative paths are relative to its directory),
    and its name as errors show it (`[gateway]`, `[[neurons]] #2`, or "" for the top level)."""

    values: dict
    path: Path
    name: str = ""

    def at(self, key: str) -> str:
        """Where a key is, for an error: `cortex.toml: [gateway].listen`."""
        return f"{self.path}: {self.name}.{key}" if self.name else f"{self.path}: {key}"

    def fail(self, key: str, expected: str, value: Any, hint: str = "") -> ConfigError:
        return ConfigError(f"{self.at(key)}: expected {expected}, got {value!r}{hint}")

    def _typed(self, key: str, kind, expected: str):
        value = self.values.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise self.fail(key, expected, value)  # bool is an int in Python; `true` is never a count
        return value

    def table(self, key: str) -> Section:
        """A sub-table (`[gateway]` of the top level); absent, an empty one."""
        value = self.values.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{key}]: expected a table, got {value!r}")
        return Section(value, self.path, f"[{key}]")

    def tables(self, key: str) -> list[Section]:
        """An array of tables (`[[neurons]]`), each named by its place: `[[neurons]] #2`."""
        items = self._typed(key, list, f"[[{key}]] tables") or []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.path}: [[{key}]] #{i + 1}: expected a table, got {item!r}")
        return [Section(item, self.path, f"[[{key}]] #{i + 1}") for i, item in enumerate(items)]

    def opt_str(self, key: str, default: str | None = None, *, expected: str = "a string") -> str | None:
        value = self._typed(key, str, expected)
        return default if value is None else value

    def opt_choice(self, key: str, choices, default: str) -> str:
        value = self.values.get(key, default)
        if value not in choices:
            raise self.fail(key, choices_text(choices), value)
        return value

    def opt_bool(self, key: str, default: bool = False) -> bool:
        value = self._typed(key, bool, "true or false")
        return default if value is None else value

    def _noun(self, key: str, base: str) -> str:
        return base + next((unit for suffix, unit in _UNITS.items() if key.endswith(suffix)), "")

    def opt_int(self, key: str, default: int | None = None, *, above=None, minimum=None, maximum=None,
                hint: str = "") -> int | None:
        expected = "an integer" + bounds_text(above, minimum, maximum)
        value = self._typed(key, int, expected)
        if value is None:
            return default
        if not _in_bounds(value, above, minimum, maximum):
            raise self.fail(key, expected, value, hint)
        return value

    def opt_float(self, key: str, default: float | None = None, *, above=None, minimum=None, maximum=None,
                  noun: str | None = None) -> float | None:
        expected = (noun or self._noun(key, "a number")) + bounds_text(above, minimum, maximum)
        value = self._typed(key, (int, float), expected)
        if value is None:
            return default
        if not _in_bounds(value, above, minimum, maximum):
            raise self.fail(key, expected, value)
        return float(value)

    def numbers(self, rules: dict[str, dict], defaults: object) -> dict[str, int | float]:
        """The keys of `rules`, each read with its bounds and kept as the type of its default on `defaults`
        (an int stays a count, a float a quantity): for `dataclasses.replace(defaults, **...)`."""
        out = {}
        for key, bounds in rules.items():
            default = getattr(defaults, key)
            read = self.opt_int if isinstance(default, int) and not isinstance(default, bool) else self.opt_float
            out[key] = read(key, default, **bounds)
        return out

    def opt_path(self, key: str, default: Path | None = None) -> Path | None:
        """A path, relative to the file's directory (`~` expanded), made absolute."""
        value = self._typed(key, str, "a path")
        return default if value is None else self.resolve(value)

    def resolve(self, value: str) -> Path:
        return (self.path.parent / Path(value).expanduser()).resolve()

    def opt_list(self, key: str, expected: str = "a list of strings", item=str) -> list:
        """A list whose items are all of one type; absent, an empty one."""
        value = self._typed(key, list, expected) or []
        if not all(isinstance(v, item) and not (isinstance(v, bool) and item is not bool) for v in value):
            raise self.fail(key, expected, value)
        return list(value)
