"""The encrypted key store, its CLI, stored: references, and several keys per connection."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway import keystore
from gateway.keystore import KeyStore, KeyStoreError

from .conftest import connection, gateway_config
from .mock_openai import completion, error_handler, json_handler

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-live-9f8e7d6c5b4a"


def make_store(tmp_path: Path, master: str = "master-one") -> KeyStore:
    return KeyStore(tmp_path / "keys.db", master)


def raw_ciphertext(path: Path, name: str) -> bytes:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT ciphertext FROM secrets WHERE name = ?", (name,)).fetchone()[0]


def test_round_trip_file_mode_and_no_plaintext_on_disk(tmp_path):
    store = make_store(tmp_path)
    store.set("groq_main", SECRET)
    assert store.get("groq_main") == SECRET
    assert stat.S_IMODE(os.stat(tmp_path / "keys.db").st_mode) == 0o600
    assert SECRET.encode() not in (tmp_path / "keys.db").read_bytes()
    sealed = raw_ciphertext(tmp_path / "keys.db", "groq_main")
    assert sealed.startswith(keystore.VERSION) and len(sealed) > len(keystore.VERSION) + 12 + len(SECRET)
    store.set("groq_main", SECRET)  # a fresh nonce every time
    assert raw_ciphertext(tmp_path / "keys.db", "groq_main") != sealed


def test_wrong_master_tampering_and_name_binding_fail_closed(tmp_path):
    store = make_store(tmp_path)
    store.set("a", SECRET)
    store.set("b", "other")
    store.close()
    with pytest.raises(KeyStoreError, match="cannot decrypt entry 'a': wrong master secret"):
        make_store(tmp_path, "master-two").get("a")
    path = tmp_path / "keys.db"
    sealed = bytearray(raw_ciphertext(path, "a"))
    sealed[-5] ^= 0x01  # one flipped byte
    with sqlite3.connect(path) as db:
        db.execute("UPDATE secrets SET ciphertext = ? WHERE name = 'a'", (bytes(sealed),))
        db.execute("UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'b') WHERE name = 'c'")
    store = make_store(tmp_path)
    with pytest.raises(KeyStoreError, match="tampered"):
        store.get("a")
    store.set("c", "placeholder")
    with sqlite3.connect(path) as db:  # b's ciphertext copied under c's name
        db.execute("UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'b') WHERE name = 'c'")
    with pytest.raises(KeyStoreError):
        store.get("c")
    assert store.get("b") == "other"


def test_rotation_is_atomic_when_it_fails_midway(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    for i in range(5):
        store.set(f"k{i}", f"secret-{i}")
    real_seal, calls = keystore._seal, []

    def failing_seal(aead, name, secret):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_seal(aead, name, secret)

    monkeypatch.setattr(keystore, "_seal", failing_seal)
    with pytest.raises(OSError):
        store.rotate_master("master-new")
    store.close()
    reopened = make_store(tmp_path)  # the old master still reads every entry
    assert [reopened.get(f"k{i}") for i in range(5)] == [f"secret-{i}" for i in range(5)]
    with pytest.raises(KeyStoreError):
        make_store(tmp_path, "master-new").get("k0")
    monkeypatch.setattr(keystore, "_seal", real_seal)
    assert reopened.rotate_master("master-new") == 5
    reopened.close()
    assert make_store(tmp_path, "master-new").get("k4") == "secret-4"
    with pytest.raises(KeyStoreError):
        make_store(tmp_path).get("k4")


def cli(tmp_path: Path, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / "gateway.yaml"
    if not config.exists():
        config.write_text(f"data_dir: {tmp_path / 'data'}\nconnections: []\n")
    environment = {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, "--config", str(config)],
        input=stdin, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=60,
    )  # fmt: skip


def test_cli_set_list_delete_rotate_never_shows_the_secret(tmp_path):
    done = cli(tmp_path, "set", "groq_groq-main", stdin=SECRET + "\n")
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "data" / "master.key"
    assert "created the master key file" in done.stderr and str(key_file) in done.stderr
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    listed = cli(tmp_path, "list")
    assert (
        "groq_groq-main" in listed.stdout and keystore.fingerprint(SECRET) in listed.stdout and " ok" in listed.stdout
    )
    old_master = key_file.read_text()
    rotated = cli(tmp_path, "rotate-master")
    assert rotated.returncode == 0 and "re-encrypted 1 entries" in rotated.stdout
    assert key_file.read_text() != old_master and not key_file.with_name("master.key.new").exists()
    assert KeyStore(tmp_path / "data" / "keys.db", key_file.read_text().strip()).get("groq_groq-main") == SECRET
    wrong = cli(tmp_path, "list", env={"GATEWAY_MASTER_KEY": "nope"})
    assert "CANNOT DECRYPT" in wrong.stdout
    assert cli(tmp_path, "set", "Bad Name", stdin="x").returncode == 1
    assert cli(tmp_path, "delete", "groq_groq-main").returncode == 0
    assert cli(tmp_path, "delete", "groq_groq-main").returncode == 1
    everything = "".join(r.stdout + r.stderr for r in (done, listed, rotated, wrong))
    assert SECRET not in everything and old_master.strip() not in everything


def upstream_seeing_keys(seen: list[str], refuse: dict[str, tuple[int, dict]] | None = None):
    """Records the key of every request; answers `refuse[key]` (status, headers) for some keys."""

    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(key)
        if refuse and key in refuse:
            status, headers = refuse[key]
            return await error_handler(status, f"refused {key}", headers=headers)(request)
        return await json_handler(completion("ok"))(request)

    return handler


async def test_stored_and_env_references_end_to_end(start_upstream, start_gateway, tmp_path, monkeypatch):
    store = KeyStore(tmp_path / "data" / "keys.db", "the-master")
    store.set("groq_main", SECRET)
    store.close()
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "the-master")
    monkeypatch.setenv("TEST_ENV_KEY", "sk-from-env")
    seen: list[str] = []
    upstream = await start_upstream(upstream_seeing_keys(seen))
    gw = await start_gateway(
        gateway_config(
            connection("stored", upstream, api_key="stored:groq_main"),
            connection("fromenv", upstream, api_key="env:TEST_ENV_KEY"),
            connection("missing", upstream, api_key="stored:absent"),
            routes={"a": ["stored"], "b": ["fromenv"]},
            data_dir=str(tmp_path / "data"),
        )
    )
    client = gw.client()
    await client.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}])
    await client.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}])
    assert seen == [SECRET, "sk-from-env"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/readyz") as response:
            ready = await response.json()
        async with session.get(f"{gw.url}/metrics") as response:
            metrics = await response.text()
    (missing,) = [c for c in ready["connections"] if c["name"] == "missing"]
    assert missing["enabled"] is False and "keys set absent" in missing["reason"]
    assert 'gateway_connection_up{connection="missing"} 0.0' in metrics
    assert SECRET not in str(ready) + metrics


async def test_wrong_master_disables_only_the_stored_connections(start_upstream, start_gateway, tmp_path, monkeypatch):
    store = KeyStore(tmp_path / "data" / "keys.db", "the-master")
    store.set("groq_main", SECRET)
    store.close()
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "a-wrong-master")
    upstream = await start_upstream(json_handler())
    gw = await start_gateway(
        gateway_config(connection("stored", upstream, api_key="stored:groq_main"), connection("plain", upstream),
                       data_dir=str(tmp_path / "data"))
    )  # fmt: skip
    stored, plain = (gw.config.connection(n) for n in ("stored", "plain"))
    assert stored.enabled is False and "wrong master secret" in (stored.disabled_reason or "")
    assert plain.enabled is True


async def test_round_robin_across_api_keys(start_upstream, start_gateway, monkeypatch):
    monkeypatch.setenv("TEST_K2", "sk-two")
    seen: list[str] = []
    upstream = await start_upstream(upstream_seeing_keys(seen))
    gw = await start_gateway(
        gateway_config(connection("multi", upstream, api_keys=["sk-one", "env:TEST_K2", "sk-three"]))
    )
    client = gw.client()
    for _ in range(4):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert seen == ["sk-one", "sk-two", "sk-three", "sk-one"]


async def test_a_refused_key_is_set_aside(start_upstream, start_gateway):
    seen: list[str] = []
    upstream = await start_upstream(upstream_seeing_keys(seen, {"sk-bad": (401, {})}))
    gw = await start_gateway(gateway_config(connection("multi", upstream, api_keys=["sk-bad", "sk-good"])))
    client = gw.client()
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-gateway-attempts"] == "multi:auth_error,multi:ok"
    for _ in range(3):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert seen == ["sk-bad", "sk-good", "sk-good", "sk-good", "sk-good"]  # set aside, not retried
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as response:
        metrics = await response.text()
    assert 'gateway_key_rotations_total{connection="multi",reason="auth_error"} 1.0' in metrics
    assert "gateway_fallbacks_total{" not in metrics  # another key is not another connection


async def test_rate_limited_keys_rest_then_the_next_connection(start_upstream, start_gateway):
    seen: list[str] = []
    busy = {"sk-1": (429, {"Retry-After": "30"}), "sk-2": (429, {"retry-after-ms": "50"})}
    upstream = await start_upstream(upstream_seeing_keys(seen, busy))
    spare_seen: list[str] = []
    spare = await start_upstream(upstream_seeing_keys(spare_seen))
    gw = await start_gateway(
        gateway_config(connection("a", upstream, api_keys=["sk-1", "sk-2"]), connection("b", spare, priority=200))
    )
    client = gw.client()
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-gateway-attempts"] == "a:rate_limited,a:rate_limited,b:ok"
    assert seen == ["sk-1", "sk-2"] and spare_seen == ["sk-upstream-secret-b"]
    import asyncio

    await asyncio.sleep(0.1)  # sk-2's rest (50 ms) is over, sk-1's (30 s) is not
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert seen[2] == "sk-2"


def test_config_rejects_both_key_forms():
    from gateway.config.model import ConfigError
    from gateway.config.sections import parse_config

    with pytest.raises(ConfigError, match=r"connections\[0\]\.api_key: is given together with api_keys"):
        parse_config({"connections": [{"name": "x", "provider": "groq", "api_key": "a", "api_keys": ["b"]}]})
