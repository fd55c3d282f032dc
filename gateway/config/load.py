"""A configuration file -> Config; and where its key store and CA live, without resolving secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .model import Config, ConfigError
from .reader import Reader
from .secrets import References
from .sections import parse_config


def read_yaml(path: str | os.PathLike[str]) -> Any:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the file ({exc.strerror}). Fix: pass an existing file with --config."
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}). Fix: save the file as UTF-8.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(f"{source}: not valid YAML at {where}. Fix: correct the syntax there.") from None


def store_location(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(data_dir, master_key_file) from a config file, without resolving any reference in it."""
    r = Reader(str(path), "", read_yaml(path))
    refs = References(r.string("data_dir", "data") or "data", r.string("master_key_file"))
    return refs.data_dir, refs.master_key_file


def ca_location(path: str | os.PathLike[str]) -> Path:
    """`proxy.ca_dir` from a config file (default `{data_dir}/ca`), without resolving any reference in it."""
    r = Reader(str(path), "", read_yaml(path))
    proxy = Reader(str(path), "proxy", r.get("proxy"))
    return Path(proxy.string("ca_dir") or Path(r.string("data_dir", "data") or "data") / "ca")


def load_config(path: str | os.PathLike[str]) -> Config:
    return parse_config(read_yaml(path), str(path))
