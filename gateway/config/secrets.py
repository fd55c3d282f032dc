"""Secret references: `env:NAME`, `stored:NAME` (the encrypted key store), or a literal."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..keystore import KeyStore, KeyStoreError, load_master

log = logging.getLogger("gateway.config")

class References:
    """Resolves secret references: `env:NAME`, `stored:NAME` (the encrypted key store under
    `data_dir`, opened only when a reference needs it), anything else a literal."""

    def __init__(self, data_dir: str = "data", master_key_file: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.master_key_file = Path(master_key_file) if master_key_file else self.data_dir / "master.key"
        self._store: KeyStore | None = None
        self._store_error: str | None = None

    def resolve(self, value: str) -> tuple[str | None, str | None]:
        """(value, None), or (None, why it cannot be had)."""
        if value.startswith("env:"):
            var = value[4:]
            resolved = os.environ.get(var)
            if not resolved:
                return None, f"environment variable {var} is not set"
            return resolved, None
        if value.startswith("stored:"):
            try:
                return self.store().get(value[7:]), None
            except KeyStoreError as exc:
                return None, str(exc)
        return value, None

    def store(self) -> KeyStore:
        if self._store_error is not None:
            raise KeyStoreError(self._store_error)
        if self._store is None:
            try:
                master = load_master(self.master_key_file, create=False)
                self._store = KeyStore(self.data_dir / "keys.db", master)
            except (KeyStoreError, OSError) as exc:
                self._store_error = f"the key store cannot be opened: {exc}"
                raise KeyStoreError(self._store_error) from None
        return self._store



def resolve_secrets(refs: References, raw: list[str], where: str) -> list[str]:
    """The secrets a list of references names; one that cannot be resolved is left out with a warning."""
    secrets = []
    for ref in raw:
        value, missing = refs.resolve(ref)
        if value is None:
            log.warning("%s: %s; that secret is not accepted", where, missing)
        else:
            secrets.append(value)
    return secrets
