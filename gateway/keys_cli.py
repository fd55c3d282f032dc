"""`python -m gateway keys set|list|delete|rotate-master`: never a secret on the command line or
on screen."""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

from .keystore import MASTER_ENV, KeyStore, KeyStoreError, check_name, load_master, new_master_secret, write_key_file


def _read_secret(prompt: str) -> str:
    """From stdin when it is piped, else a prompt that does not echo."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.read().strip()


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def run(action: str, name: str | None, data_dir: Path, key_file: Path) -> int:
    try:
        if name is not None:
            check_name(name)
        master = load_master(key_file, create=action == "set", announce=lambda m: print(m, file=sys.stderr))
        store = KeyStore(data_dir / "keys.db", master)
        try:
            return _act(store, action, name, key_file)
        finally:
            store.close()
    except KeyStoreError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 1


def _act(store: KeyStore, action: str, name: str | None, key_file: Path) -> int:
    if action == "set":
        assert name is not None
        secret = _read_secret(f"Secret for {name}: ")
        store.set(name, secret)
        print(f"stored {name}")
    elif action == "list":
        entries = store.entries()
        if not entries:
            print("(no entries)")
        for entry in entries:
            created, updated = _stamp(entry.created_at), _stamp(entry.updated_at)
            try:
                store.get(entry.name)
                state = "ok"
            except KeyStoreError:
                state = "CANNOT DECRYPT (wrong master secret, or tampered)"
            print(f"{entry.name:40} created {created}  updated {updated}  fingerprint {entry.fingerprint}  {state}")
    elif action == "delete":
        assert name is not None
        if not store.delete(name):
            raise KeyStoreError(f"no entry {name!r}")
        print(f"deleted {name}")
    else:
        _rotate(store, key_file)
    return 0


def _rotate(store: KeyStore, key_file: Path) -> None:
    """The new master from stdin, or (when the key file is in use) a generated one. The new key file is
    written beside the old one first and swapped in only after the store was re-encrypted."""
    from_env = bool(os.environ.get(MASTER_ENV))
    piped = not sys.stdin.isatty()
    new_master = sys.stdin.read().strip() if piped else ""
    if not new_master:
        if from_env:
            raise KeyStoreError(f"{MASTER_ENV} is in use: pipe the new master secret on stdin")
        new_master = new_master_secret()
    if from_env:
        count = store.rotate_master(new_master)
        print(f"re-encrypted {count} entries; now set {MASTER_ENV} to the new master secret")
        return
    staged = key_file.with_name(key_file.name + ".new")
    write_key_file(staged, new_master)
    try:
        count = store.rotate_master(new_master)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, key_file)
    print(f"re-encrypted {count} entries under a new master secret in {key_file}")
