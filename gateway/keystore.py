"""The encrypted key store: provider keys out of plain config files.

SQLite under `data_dir`. Each secret is sealed with AES-256-GCM under a key derived with HKDF-SHA256
(a per-store salt) from the master secret: `GATEWAY_MASTER_KEY`, or the key file (created on first
use, mode 0600). A ciphertext carries a version prefix and a random nonce, and the entry's name is
bound as associated data: a ciphertext copied to another name does not decrypt. Secrets are never
printed, logged or echoed; `keys list` shows a 4-character fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"gk1"  # ciphertext format: prefix, 12-byte nonce, AES-GCM output (tag included)
NONCE_BYTES = 12
NAME_RE = re.compile(r"^[a-z0-9_-]{1,128}$")
MASTER_ENV = "GATEWAY_MASTER_KEY"
SCHEMA = """
CREATE TABLE IF NOT EXISTS store (id INTEGER PRIMARY KEY CHECK (id = 1), salt BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    ciphertext BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


class KeyStoreError(Exception):
    """A key store problem; the message names the entry and the fix, never a secret."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    fingerprint: str
    created_at: float
    updated_at: float


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise KeyStoreError(
            f"invalid entry name {name!r}: use lowercase letters, digits, hyphens and underscores (e.g. groq_groq-main)"
        )


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:4]


def new_master_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def load_master(key_file: Path, *, create: bool, announce: Callable[[str], None] | None = None) -> str:
    """The master secret: GATEWAY_MASTER_KEY, else the key file (created when allowed and absent)."""
    from_env = os.environ.get(MASTER_ENV)
    if from_env:
        return from_env
    if key_file.exists():
        return key_file.read_text().strip()
    if not create:
        raise KeyStoreError(f"no master secret: set {MASTER_ENV} or create the key file {key_file}")
    write_key_file(key_file, new_master_secret())
    if announce is not None:
        announce(f"created the master key file {key_file} (mode 0600): back it up, the store is unreadable without it")
    return key_file.read_text().strip()


def write_key_file(path: Path, master: str) -> None:
    """Write atomically, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(master + "\n")
    os.replace(temporary, path)


class KeyStore:
    def __init__(self, path: Path, master: str) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT salt FROM store WHERE id = 1").fetchone()
        if row is None:
            self.db.execute("INSERT INTO store (id, salt) VALUES (1, ?)", (secrets.token_bytes(16),))
            row = self.db.execute("SELECT salt FROM store WHERE id = 1").fetchone()
        self._aead = _aead(master, row[0])

    def close(self) -> None:
        self.db.close()

    def set(self, name: str, secret: str) -> None:
        check_name(name)
        if not secret:
            raise KeyStoreError(f"refusing to store an empty secret as {name}")
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO secrets VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, "
                "updated_at = excluded.updated_at",
                (name, _seal(self._aead, name, secret), fingerprint(secret), now, now),
            )

    def get(self, name: str) -> str:
        row = self.db.execute("SELECT ciphertext FROM secrets WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyStoreError(f"no entry {name!r} in the key store {self.path}: add it with `keys set {name}`")
        return _open(self._aead, name, row[0])

    def delete(self, name: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount > 0

    def entries(self) -> list[Entry]:
        rows = self.db.execute("SELECT name, fingerprint, created_at, updated_at FROM secrets ORDER BY name")
        return [Entry(*row) for row in rows]

    def rotate_master(self, new_master: str) -> int:
        """Re-encrypt every entry under `new_master` (and a new salt) in one transaction: a failure
        midway rolls back, and the store stays readable with the old master secret."""
        salt = secrets.token_bytes(16)
        new = _aead(new_master, salt)
        rows = self.db.execute("SELECT name, ciphertext FROM secrets").fetchall()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for name, ciphertext in rows:
                sealed = _seal(new, name, _open(self._aead, name, ciphertext))
                self.db.execute("UPDATE secrets SET ciphertext = ? WHERE name = ?", (sealed, name))
            self.db.execute("UPDATE store SET salt = ? WHERE id = 1", (salt,))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._aead = new
        return len(rows)


def _aead(master: str, salt: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"ai-gateway key store").derive(master.encode())
    return AESGCM(key)


def _seal(aead: AESGCM, name: str, secret: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + aead.encrypt(nonce, secret.encode(), name.encode())


def _open(aead: AESGCM, name: str, ciphertext: bytes) -> str:
    if not ciphertext.startswith(VERSION):
        raise KeyStoreError(f"entry {name!r} has an unknown format: set it again with `keys set {name}`")
    body = ciphertext[len(VERSION) :]
    try:
        return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], name.encode()).decode()
    except InvalidTag:
        raise KeyStoreError(
            f"cannot decrypt entry {name!r}: wrong master secret ({MASTER_ENV} or the key file), "
            f"or the entry was tampered with; fix the master secret or set the entry again with `keys set {name}`"
        ) from None
