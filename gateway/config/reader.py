"""Reading one YAML mapping so that every error names the file, the key path and the fix."""

from __future__ import annotations

import difflib
import math
from typing import Any, NoReturn

from .model import ConfigError


class Reader:
    """Reads one YAML mapping, knowing its file and key path so every error can name both."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {kind_of(data)}", "write it as `key: value` lines")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, problem: str, fix: str, key: str | None = None) -> NoReturn:
        where = self.key(key) if key else (self.path or "(top level)")
        raise ConfigError(f"{self.source}: {where}: {problem}. Fix: {fix}.")

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str | None = None, *, required: bool = False, fix: str = "") -> str | None:
        value = self.get(key)
        if value is None:
            if required:
                self.fail("is required", fix or f"add `{key}:`", key)
            return default
        if not isinstance(value, str) or not value:
            self.fail(f"must be a non-empty string, got {kind_of(value)}", fix or "quote the value", key)
        return value

    def number(self, key: str, default: float, *, integer: bool = False, positive: bool = True) -> Any:
        value = self.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or not math.isfinite(value)
        ):
            want = "a whole number" if integer else "a number"
            self.fail(f"must be {want}, got {kind_of(value)}", f"write {want}, e.g. `{key}: {default}`", key)
        if positive and value <= 0:
            self.fail(f"must be greater than 0, got {value}", f"e.g. `{key}: {default}`", key)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(f"must be true or false, got {kind_of(value)}", f"write `{key}: true` or `{key}: false`", key)
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            self.fail("must map strings to strings", f"write `{key}: {{name: value}}`", key)
        return dict(value)

    def finish(self) -> None:
        """Reject keys nobody read: a typo must not silently fall back to a default."""
        for key in self.data:
            if key not in self.seen:
                close = difflib.get_close_matches(str(key), sorted(self.seen), n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(sorted(self.seen))}"
                self.fail("unknown key", f"remove it or correct it ({hint})", str(key))


def kind_of(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
