"""The benchmark: the gateway against the thinnest possible aiohttp forwarder (the floor), same run.

    make bench                     # installs wrk and valgrind (and perf if it can), then runs this
    python -m tests.bench.run [--rounds 3] [--duration 4] [--only "chat c=1,stream c=32"] [--json out.json]
    python -m tests.bench.run --callgrind-only      # only the instruction counts (or --no-callgrind: none)

Starts a mock upstream, the floor and the gateway on free loopback ports; the floor and the gateway
on core 0, the mock and the load generators on core 1. Every round runs every workload against
every target (direct -> mock, floor -> mock, gateway -> mock), one at a time; the table shows the
median of the rounds. Then a fixed number of requests and streams measures each server's CPU time
per request and per stream event, and (when valgrind is installed) a second floor and gateway under
callgrind count their instructions per request and per stream event, which do not depend on load.
See tests/bench/README.md for how to read the output.

Exit status: 0 when the bench ran (whatever the verdicts), 1 when it could not measure (a server did
not start, a target answered errors), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import noisy

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parents[1]
PYTHON = sys.executable
HOST = "127.0.0.1"  # loopback only, always
SERVER_CPU = "0"  # the floor and the gateway (one measured at a time)
LOAD_CPU = "1"  # the mock upstream and the load generators

TARGETS = ("direct", "floor", "gateway")
CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello in a few words."}]
CHAT_BODY = {"model": "bench-model", "messages": MESSAGES}
STREAM_BODY = {"model": "bench-model", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
STREAM_CHUNKS = 20  # content chunks per stream; the mock adds a finish chunk, a usage chunk and [DONE]
EVENTS_PER_STREAM = STREAM_CHUNKS + 3


# --- what is measured: one entry per table row group ------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One row group of the table. `stream` picks the load generator: wrk, or streamload.py.

    A workload only the gateway serves (a client format the floor cannot translate, such as the
    Responses API on a chat upstream) lists `targets=("gateway",)` and names, in `compare_to`, the
    workload whose direct and floor results it is compared with."""

    name: str
    stream: bool
    concurrency: int
    path: str = CHAT_PATH
    body: dict = field(default_factory=dict)
    targets: tuple[str, ...] = TARGETS
    compare_to: str | None = None
    events: int | None = EVENTS_PER_STREAM  # SSE events a stream must deliver (None: not checked)

    def request_body(self) -> bytes:
        return json.dumps(self.body or (STREAM_BODY if self.stream else CHAT_BODY)).encode()


WORKLOADS = [
    Workload("chat c=1", stream=False, concurrency=1),
    Workload("chat c=64", stream=False, concurrency=64),
    Workload("stream c=1", stream=True, concurrency=1),
    Workload("stream c=16", stream=True, concurrency=16),
    Workload("stream c=32", stream=True, concurrency=32),
    # A Responses client on the same chat upstream: the downgrade bridge, compared with the chat floor.
    Workload(
        "responses stream c=32",
        stream=True,
        concurrency=32,
        path="/v1/responses",
        body={"model": "bench-model", "input": "Say hello.", "stream": True},
        targets=("gateway",),
        compare_to="stream c=32",
        events=None,
    ),
]


@dataclass(frozen=True)
class Check:
    """A target for the gateway, as a ratio to the floor measured in the same run."""

    label: str
    workload: str
    metric: str  # "added_p50_ratio" (gateway added p50 / floor added p50) or "rate_ratio" (gateway / floor)
    op: str  # "<=" or ">="
    limit: float


CHECKS = [
    Check("added p50 latency, chat c=1", "chat c=1", "added_p50_ratio", "<=", 1.5),
    Check("requests/s, chat c=64", "chat c=64", "rate_ratio", ">=", 0.6),
    Check("streams/s, stream c=32", "stream c=32", "rate_ratio", ">=", 0.8),
    Check("streams/s, responses stream c=32", "responses stream c=32", "rate_ratio", ">=", 0.5),
]
RSS_LIMIT_MB = 80.0
NOISY_P99_LIMIT = 2.0  # the healthy client's p99 beside a flooding neighbour, over its quiet p99


def gateway_config(port: int, mock_port: int, data_dir: Path, flood_port: int | None = None) -> str:
    """Routing on (a glob route), logging at its default (info, one line per request), metrics on. The
    data directory (stored responses) is the run's own: every run starts with an empty store. With
    `flood_port`, model `noisy-flood` goes to the flooding upstream (its breaker off: it floods every time)."""
    flood = flood_route = ""
    if flood_port:
        flood = f"""  - name: flood
    provider: openai_compatible
    base_url: http://{HOST}:{flood_port}/v1
    api_key: bench-upstream-key
    timeout: {{connect: 5, first_byte: 30, idle: 30, total: 120}}
    breaker: {{failures: 0}}
"""
        flood_route = f'  "{noisy.FLOOD_MODEL}": [flood]\n'
    return f"""# Generated by tests/bench/run.py for one bench run.
data_dir: {data_dir}
server:
  host: {HOST}
  port: {port}
connections:
  - name: mock
    provider: openai_compatible
    base_url: http://{HOST}:{mock_port}/v1
    api_key: bench-upstream-key
    timeout: {{connect: 5, first_byte: 30, idle: 30, total: 120}}
{flood}routes:
  "bench-*": [mock]
{flood_route}"""


# --- processes ---------------------------------------------------------------------------------------


class SetupError(Exception):
    """The bench cannot measure: a server did not start, a target answered errors."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


class Server:
    """A server process on a loopback port; its output goes to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        cpu: str | None,
        log: Path,
        health: str | None,
        env: dict[str, str] | None = None,
    ):
        self.name, self.argv, self.port, self.cpu, self.log, self.health = name, argv, port, cpu, log, health
        self.env = env  # None: the orchestrator's environment
        self.proc: subprocess.Popen | None = None
        self.terminated = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def start(self) -> None:
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C reaches only the orchestrator, which then stops every server.
            self.proc = subprocess.Popen(
                pinned(self.cpu, self.argv),
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.05)
        raise SetupError(f"{self.name} did not become ready within {timeout:g} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            if self.health is None:  # a TCP connect is enough
                socket.create_connection((HOST, self.port), timeout=1).close()
                return True
            status, _ = http_get(self.port, self.health)
            return status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """Ask it to stop (one SIGTERM) without waiting: `stop()` then waits."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL when it has not exited within `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (every thread, living or gone), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the third on: state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


# --- load generators ---------------------------------------------------------------------------------


@dataclass
class Result:
    count: int  # requests or streams completed
    rate: float  # per second
    p50_ms: float
    p99_ms: float
    errors: int
    events: int = 0  # SSE events received (streams only)
    error_samples: list[str] = field(default_factory=list)
    busy: tuple[float, float] | None = None  # (server core, load core) busy fraction mid-run


def core_times() -> dict[str, tuple[int, int]]:
    """Per core (`"0"`, `"1"`, ...): (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            out[name[3:]] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


class Load:
    """Runs one load generator on the load core; for timed runs, also samples how busy each core was
    in the middle half of the run (past the generator's start-up): is the server or the load the limit?"""

    def __init__(self, load_cpu: str | None, server_cpu: str | None) -> None:
        self.cpu = load_cpu
        self.cores = (server_cpu, load_cpu)

    def run(
        self, workload: Workload, url: str, duration: int, *, count: int | None = None, connections: int | None = None
    ) -> Result:
        concurrency = connections or workload.concurrency
        if workload.stream:
            return self._stream(workload, url, duration, concurrency, count)
        return self._wrk(workload, url, duration, concurrency, count)

    def _wrk(self, workload: Workload, url: str, duration: int, concurrency: int, count: int | None) -> Result:
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s"]
        argv += ["-s", str(BENCH_DIR / "post.lua"), url]
        env = {**os.environ, "BENCH_BODY": workload.request_body().decode(), "BENCH_MAX_REQUESTS": str(count or 0)}
        out, busy = self._exec(argv, duration, env, until="BENCH_COUNT_REACHED" if count else None, sample=not count)
        match = re.search(r"^BENCH_RESULT (\{.*\})$", out, re.MULTILINE)
        if match is None:
            raise SetupError(f"wrk printed no result:\n{out}")
        r = json.loads(match.group(1))
        errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
        seconds = r["duration_us"] / 1e6
        good = max(0, r["requests"] - r["status_errors"])  # wrk counts a non-2xx answer as a request too
        rate = good / seconds if seconds else 0.0
        return Result(good, rate, r["p50_us"] / 1000, r["p99_us"] / 1000, errors, busy=busy)

    def _stream(self, workload: Workload, url: str, duration: int, concurrency: int, count: int | None) -> Result:
        argv = [PYTHON, str(BENCH_DIR / "streamload.py"), "--url", url, "--body", workload.request_body().decode()]
        argv += ["--header", "Authorization: Bearer bench-client", "--concurrency", str(concurrency)]
        argv += ["--duration", str(duration)] + (["--count", str(count)] if count else [])
        out, busy = self._exec(argv, duration, None, sample=count is None)
        r = json.loads(out.strip().splitlines()[-1])
        return Result(
            r["streams"], r["rate"], r["p50_ms"], r["p99_ms"], r["errors"], r["events"], r["error_samples"], busy
        )

    def _exec(
        self, argv: list[str], duration: int, env: dict[str, str] | None, until: str | None = None, sample: bool = True
    ) -> tuple[str, tuple[float, float] | None]:
        """Run to the end and return stdout and (server core, load core) busy fractions. With `until`
        (wrk with a request count), a line starting with it ends the run: wrk's main thread sleeps out
        the whole -d duration even when its thread has stopped, and SIGINT makes it report at once."""
        busy = None
        with subprocess.Popen(
            pinned(self.cpu, argv), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            head = ""
            try:
                if until is not None:
                    for line in proc.stdout:  # ends at EOF when the -d duration ran out first
                        head += line
                        if line.startswith(until):
                            proc.send_signal(signal.SIGINT)
                            break
                elif sample and self.cores[1] is not None and duration >= 2:
                    time.sleep(duration / 4)
                    before = core_times()
                    time.sleep(duration / 2)
                    after = core_times()
                    busy = tuple(_busy(before, after, core) for core in self.cores)
                out, err = proc.communicate(timeout=duration + 60)
            except BaseException:
                proc.kill()
                raise
        if proc.returncode != 0:
            raise SetupError(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{head}{out}\n{err}")
        return head + out, busy  # type: ignore[return-value]


def _busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], core: str | None) -> float:
    if core is None or core not in before or core not in after:
        return 0.0
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total else 0.0


# --- perf ----------------------------------------------------------------------------------------------


def perf_support(event: str) -> tuple[bool, str]:
    """Whether `perf stat -e EVENT` counts here, and if not, why."""
    if shutil.which("perf") is None:
        return False, "perf is not installed (Debian package linux-perf)"
    try:
        done = subprocess.run(
            ["perf", "stat", "-x", ",", "-e", event, "--", "true"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"perf stat failed: {exc}"
    value = _perf_value(done.stderr, event)
    if value is None:
        first = next((line for line in done.stderr.splitlines() if event in line), done.stderr.strip()[:200])
        return False, f"`perf stat -e {event}` does not count on this machine ({first.strip() or 'no output'})"
    return True, ""


def _perf_value(stderr: str, event: str) -> float | None:
    for line in stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith(event):
            try:
                return float(parts[0])
            except ValueError:
                return None
    return None


class PerfCounter:
    """`perf stat -e EVENT -p PID` around a measurement; `stop()` returns the count (or None)."""

    def __init__(self, event: str, pid: int) -> None:
        self.event = event
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", event, "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)  # let it attach

    def stop(self) -> float | None:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, stderr = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        return _perf_value(stderr, self.event)


# --- callgrind: deterministic instruction counts ------------------------------------------------------

CALLGRIND_WARMUP = (50, 5)  # requests, streams sent before the first checkpoint (start-up and warm-up: not counted)
CALLGRIND_READY_S = 90.0  # python under valgrind starts 30-60x slower: ~10-20 s here
CALLGRIND_DUMP_S = 60.0  # the longest a checkpoint may take


@dataclass
class InstrCount:
    """Instructions one server executed for a fixed number of sequential requests and streams."""

    requests: int = 0
    request_instructions: int | None = None
    streams: int = 0
    events: int = 0
    stream_instructions: int | None = None
    wakeups: int = 0  # checkpoints that needed a TCP connect to wake the server (0 when vgdb can use ptrace)


def callgrind_support() -> tuple[bool, str]:
    """Whether valgrind and callgrind_control are here, and if not, why."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed (Debian package valgrind; make bench installs it)"
    return True, ""


class Callgrind:
    """A server under `valgrind --tool=callgrind`, with checkpoints: `checkpoint()` makes callgrind dump
    the counters (which also zeroes them) through `callgrind_control --dump` and returns the instructions
    executed since the previous checkpoint (the first: since start-up). The count does not depend on
    the machine's load, only on the code paths taken."""

    def __init__(
        self, name: str, argv: list[str], port: int, health: str | None, workdir: Path, cpus: str | None
    ) -> None:
        self.out = workdir / f"{name}.callgrind"
        self.prefix = workdir / "vgdb"  # vgdb's FIFOs, in the work directory rather than /tmp
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", "--dump-instr=no"]
        valgrind += ["--collect-atstart=yes", f"--vgdb-prefix={self.prefix}"]
        # A fixed hash seed: set and dict layouts, and so the code paths, are the same from run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        self.server = Server(f"{name} (callgrind)", valgrind + argv, port, cpus, workdir / f"{name}.log", health, env)
        self.wakeups = 0
        self.checkpoints = 0

    def checkpoint(self) -> int:
        """Dump the counters and return the instructions since the previous checkpoint. callgrind_control
        reaches the server through vgdb, which interrupts a process blocked in a system call with ptrace;
        where ptrace is not allowed the dump waits for the server to run, so a TCP connect wakes it."""
        self.checkpoints += 1
        label = f"checkpoint-{self.checkpoints}"
        before = set(self.out.parent.glob(self.out.name + ".*"))
        argv = ["callgrind_control", f"--vgdb-prefix={self.prefix}", f"--dump={label}", str(self.server.pid)]
        deadline = time.monotonic() + CALLGRIND_DUMP_S
        woken = False
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            try:
                while True:
                    try:
                        output, _ = proc.communicate(timeout=2)
                        break
                    except subprocess.TimeoutExpired:
                        if time.monotonic() > deadline:
                            raise SetupError(f"{self.server.name}: callgrind_control --dump did not answer") from None
                        self.wakeups += not woken
                        woken = True
                        with contextlib.suppress(OSError):
                            socket.create_connection((HOST, self.server.port), timeout=5).close()
            finally:
                if proc.poll() is None:
                    proc.kill()
        dumps = sorted(set(self.out.parent.glob(self.out.name + ".*")) - before)
        if len(dumps) != 1:
            raise SetupError(f"{self.server.name}: callgrind_control --dump wrote {len(dumps)} files:\n{output}")
        text = dumps[0].read_text(errors="replace")
        match = re.search(r"^totals:\s*(\d+)", text, re.MULTILINE) or re.search(r"^summary:\s*(\d+)", text, re.M)
        if match is None or not re.search(rf"^desc: Trigger: dump {label}$", text[:2000], re.MULTILINE):
            raise SetupError(f"{self.server.name}: no instruction count in {dumps[0].name}")
        dumps[0].unlink()
        return int(match.group(1))


class SequentialClient:
    """One keep-alive connection, one request at a time: the same requests in the same order every run."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-client"}
        self.chat = json.dumps(CHAT_BODY).encode()
        self.stream = json.dumps(STREAM_BODY).encode()

    def requests(self, count: int) -> None:
        for _ in range(count):
            self._post(self.chat)

    def streams(self, count: int) -> int:
        """Returns the SSE events received."""
        events = 0
        for _ in range(count):
            data = self._post(self.stream)
            if not data.endswith(b"data: [DONE]\n\n"):
                raise SetupError(f"a stream did not end with data: [DONE]: {data[-200:]!r}")
            events += data.count(b"\n\n")
        return events

    def _post(self, body: bytes) -> bytes:
        self.conn.request("POST", CHAT_PATH, body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SetupError(f"status {response.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def measure_callgrind(
    workdir: Path, mock_port: int, requests: int, streams: int, server_cpu: str | None, load_cpu: str | None
) -> dict[str, InstrCount]:
    """Start the floor and the gateway under callgrind, at once and on both cores (start-up is the slow
    part), then move them to the server core, where each is measured alone, as in the rounds (the
    counts move by a few % when a server shares the mock's core: how often a read finds the upstream's
    answer already there changes the code paths). Then per server: a warm-up, a checkpoint, `requests`
    requests, a checkpoint, `streams` streams, a checkpoint. The phases between checkpoints leave out
    start-up, warm-up and shutdown. Both always stopped."""
    workdir.mkdir(parents=True, exist_ok=True)
    cpus = f"{server_cpu},{load_cpu}" if server_cpu is not None and load_cpu is not None else None
    floor_port, gateway_port = free_port(), free_port()
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(gateway_port, mock_port, workdir / "data"))
    upstream = f"http://{HOST}:{mock_port}"
    runs = {
        "floor": Callgrind(
            "floor",
            [PYTHON, str(BENCH_DIR / "floor.py"), "--port", str(floor_port), "--upstream", upstream],
            floor_port,
            None,
            workdir,
            cpus,
        ),
        "gateway": Callgrind(
            "gateway",
            [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--host", HOST, "--port", str(gateway_port)],
            gateway_port,
            "/healthz",
            workdir,
            cpus,
        ),
    }
    counts: dict[str, InstrCount] = {}
    try:
        for run in runs.values():
            run.server.start()
        for run in runs.values():
            run.server.wait_ready(CALLGRIND_READY_S)
            if server_cpu is not None:  # every thread (valgrind runs the client's threads as its own)
                subprocess.run(
                    ["taskset", "-a", "-p", "-c", server_cpu, str(run.server.pid)], check=True, capture_output=True
                )
        for target, run in runs.items():
            client = SequentialClient(run.server.port)
            try:
                client.requests(CALLGRIND_WARMUP[0])
                client.streams(CALLGRIND_WARMUP[1])
                run.checkpoint()  # start-up and warm-up: left out
                count = InstrCount(requests=requests, streams=streams)
                if requests:
                    client.requests(requests)
                    count.request_instructions = run.checkpoint()
                if streams:
                    count.events = client.streams(streams)
                    count.stream_instructions = run.checkpoint()
            except (OSError, http.client.HTTPException) as exc:
                raise SetupError(f"{run.server.name}: {exc}\n{run.server.log_tail()}") from exc
            finally:
                client.close()
            count.wakeups = run.wakeups
            counts[target] = count
            run.server.stop(timeout=30)  # gone before the next one is measured on the same core
    finally:
        for run in runs.values():
            run.server.terminate()
        for run in runs.values():
            with contextlib.suppress(Exception):
                run.server.stop(timeout=30)
    return counts


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Summary:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    events_per_stream: float | None
    server_busy: float | None = None  # median busy fraction of the server core mid-run
    load_busy: float | None = None  # ... and of the load core (mock + load generator)
    added_p50_ms: float | None = None
    rate_ratio: float | None = None
    added_p50_ratio: float | None = None


def median_summary(results: list[Result]) -> Summary:
    streams = sum(r.count for r in results)
    events = sum(r.events for r in results)
    busy = [r.busy for r in results if r.busy is not None]
    return Summary(
        rate=statistics.median(r.rate for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        events_per_stream=events / streams if events and streams else None,
        server_busy=statistics.median(b[0] for b in busy) if busy else None,
        load_busy=statistics.median(b[1] for b in busy) if busy else None,
    )


def summarise(workloads: list[Workload], runs: dict[tuple[str, str], list[Result]]) -> dict[tuple[str, str], Summary]:
    table = {key: median_summary(results) for key, results in runs.items() if results}
    for workload in workloads:
        base = workload.compare_to or workload.name
        direct, floor = table.get((base, "direct")), table.get((base, "floor"))
        for target in workload.targets:
            s = table.get((workload.name, target))
            if s is None:
                continue
            if direct is not None and target != "direct":
                s.added_p50_ms = s.p50_ms - direct.p50_ms
            if floor is not None and target != "floor":
                s.rate_ratio = s.rate / floor.rate if floor.rate else None
                # at concurrency 1 the added p50 is the proxy's own time; above it, mostly queueing
                if workload.concurrency == 1 and direct is not None and s.added_p50_ms is not None:
                    floor_added = floor.p50_ms - direct.p50_ms
                    s.added_p50_ratio = s.added_p50_ms / floor_added if floor_added > 0 else None
    return table


@dataclass
class CpuCost:
    requests: int = 0
    request_cpu_s: float = 0.0
    request_instructions: float | None = None
    streams: int = 0
    events: int = 0
    stream_cpu_s: float = 0.0
    stream_instructions: float | None = None


def per(total: float | None, count: int) -> float | None:
    return total / count if total is not None and count else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def fmt(value: float | None, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def print_table(workloads: list[Workload], table: dict[tuple[str, str], Summary], rounds: int, duration: int) -> None:
    print(f"\nThroughput and latency (median of {rounds} rounds, {duration} s per run; rate = requests/s or streams/s)")
    header = (
        f"{'workload':<22} {'target':<8} {'rate/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
        f"{'rate/floor':>10} {'+p50/floor':>10} {'ev/stream':>9} {'errors':>6} {'srv cpu':>7} {'load cpu':>8}"
    )
    print(header)
    print("-" * len(header))
    for workload in workloads:
        targets = workload.targets
        if workload.compare_to:  # show the baseline rows it is compared with
            targets = tuple(t for t in TARGETS if t not in workload.targets) + targets
        for target in targets:
            source = workload.name if target in workload.targets else (workload.compare_to or workload.name)
            s = table.get((source, target))
            if s is None:
                continue
            label = workload.name if target == targets[0] else ""
            target_label = f"({target})" if source != workload.name else target
            print(
                f"{label:<22} {target_label:<8} {s.rate:>9.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} "
                f"{fmt(s.added_p50_ms):>8} {fmt(s.rate_ratio):>10} {fmt(s.added_p50_ratio):>10} "
                f"{fmt(s.events_per_stream, '.1f'):>9} {s.errors:>6} {pct(s.server_busy):>7} {pct(s.load_busy):>8}"
            )
    bound = [f"{w} -> {t}" for (w, t), s in table.items() if t != "direct" and load_bound(s)]
    if bound:
        print(
            "load-bound (load core >= 95% busy, server core < 90%: the rate is a lower bound for that target): "
            + ", ".join(bound)
        )
    idle = [s.server_busy for (_, t), s in table.items() if t == "direct" and s.server_busy is not None]
    if idle and max(idle) > 0.1:
        print(
            f"warning: the server core was up to {max(idle) * 100:.0f}% busy during direct runs, when nothing of the "
            "bench runs there: another process shares this machine, expect noise"
        )


def print_costs(
    costs: dict[str, CpuCost],
    memory: dict[str, tuple[float, float]],
    cpu_requests: int,
    streams: int,
    instr: dict[str, tuple[float | None, float | None]],
    instr_line: str,
) -> None:
    """The cost table. `instr`: per target, (instructions per request, per stream event), from callgrind
    or perf; `instr_line` says which, and how they were counted."""
    cpu = (
        f"CPU: utime+stime from /proc/PID/stat over a fixed count, {cpu_requests} requests at c=64 and {streams} "
        "streams at c=32"
        if costs
        else "CPU: not measured"
    )
    print(f"\nCPU and memory per server process ({cpu}; RSS: /proc/PID/status after the runs)")
    header = (
        f"{'process':<16} {'us/request':>10} {'us/stream':>10} {'us/event':>9} {'instr/request':>14} "
        f"{'instr/event':>12} {'RSS MB':>7} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    names = {"direct": "mock (upstream)", "floor": "floor", "gateway": "gateway"}
    for target in (t for t in TARGETS if t in costs or t in instr):
        cost = costs.get(target, CpuCost())
        rss, peak = memory.get(target, (None, None))
        per_request = per(cost.request_cpu_s * 1e6, cost.requests)
        per_stream = per(cost.stream_cpu_s * 1e6, cost.streams)
        per_event = per(cost.stream_cpu_s * 1e6, cost.events)
        instr_request, instr_event = instr.get(target, (None, None))
        print(
            f"{names[target]:<16} {fmt(per_request, '.0f'):>10} {fmt(per_stream, '.0f'):>10} "
            f"{fmt(per_event, '.1f'):>9} {fmt(instr_request, ',.0f'):>14} {fmt(instr_event, ',.0f'):>12} "
            f"{fmt(rss, '.1f'):>7} {fmt(peak, '.1f'):>8}"
        )
    floor, gateway = costs.get("floor"), costs.get("gateway")
    if floor and gateway and floor.requests and gateway.requests and floor.request_cpu_s and floor.stream_cpu_s:
        request_ratio = (gateway.request_cpu_s / gateway.requests) / (floor.request_cpu_s / floor.requests)
        event_ratio = (gateway.stream_cpu_s / max(gateway.events, 1)) / (floor.stream_cpu_s / max(floor.events, 1))
        print(f"gateway / floor: CPU per request {request_ratio:.2f}x, CPU per stream event {event_ratio:.2f}x")
    (floor_request, floor_event), (gateway_request, gateway_event) = (
        instr.get(t, (None, None)) for t in ("floor", "gateway")
    )
    ratios = [
        f"{label} {gw / fl:.2f}x"
        for label, gw, fl in (
            ("instructions per request", gateway_request, floor_request),
            ("per stream event", gateway_event, floor_event),
        )
        if gw is not None and fl
    ]
    if ratios:
        print("gateway / floor: " + ", ".join(ratios))
    print(f"instructions: {instr_line}")


def instructions(
    costs: dict[str, CpuCost],
    perf_ok: bool,
    perf_note: str,
    counts: dict[str, InstrCount],
    callgrind_note: str,
    callgrind_s: float,
) -> tuple[dict[str, tuple[float | None, float | None]], str]:
    """The instruction columns and the line that says where they come from: callgrind when it counted,
    else perf stat when the machine exposes the counter, else nothing (and why)."""
    if counts:
        instr = {
            t: (per(c.request_instructions, c.requests), per(c.stream_instructions, c.events))
            for t, c in counts.items()
        }
        any_count = next(iter(counts.values()))
        events = any_count.events / any_count.streams if any_count.streams else EVENTS_PER_STREAM
        line = (
            f"callgrind (deterministic): the floor and the gateway each started again under valgrind, warmed up "
            f"({CALLGRIND_WARMUP[0]} requests, {CALLGRIND_WARMUP[1]} streams), then {any_count.requests} requests "
            f"and {any_count.streams} streams ({events:g} events each), one at a time, counted between "
            f"`callgrind_control --dump` checkpoints ({callgrind_s:.0f} s)"
        )
        wakeups = sum(c.wakeups for c in counts.values())
        if wakeups:
            line += f"; {wakeups} checkpoints needed a wake-up connect (vgdb could not use ptrace): a little noise"
        if perf_ok:
            line += "; perf stat's counts are in --json"
        return instr, line
    skipped = f"; callgrind: {callgrind_note}" if callgrind_note else ""
    if perf_ok and costs:
        instr = {
            t: (per(c.request_instructions, c.requests), per(c.stream_instructions, c.events)) for t, c in costs.items()
        }
        return instr, f"perf stat -e instructions -p PID over the CPU measurement (depends on load){skipped}"
    return {}, f"not reported: {perf_note or 'the CPU measurement was skipped'}{skipped}"


def load_bound(s: Summary | None) -> bool:
    """The load core, not the server's, was the limit: the rate is a lower bound for that target."""
    return s is not None and s.load_busy is not None and s.load_busy >= 0.95 and (s.server_busy or 0) < 0.9


def verdicts(
    workloads: list[Workload], table: dict[tuple[str, str], Summary], gateway_rss: float | None
) -> list[tuple[str, str, bool | None]]:
    base_of = {w.name: w.compare_to or w.name for w in workloads}
    out: list[tuple[str, str, bool | None]] = []
    for check in CHECKS:
        s = table.get((check.workload, "gateway"))
        value = getattr(s, check.metric) if s is not None else None
        if value is None:
            out.append((check.label, f"not measured (needs {check.workload} on direct, floor and gateway)", None))
            continue
        ok = value <= check.limit if check.op == "<=" else value >= check.limit
        detail = f"gateway/floor = {value:.2f} (target {check.op} {check.limit:g})"
        floor = table.get((base_of.get(check.workload, check.workload), "floor"))
        if check.metric == "rate_ratio" and load_bound(floor):
            detail += "; the floor was load-bound, so the true ratio is lower"
        if check.metric == "rate_ratio" and load_bound(s):
            detail += "; the gateway was load-bound, so the true ratio may be higher"
        out.append((check.label, detail, ok))
    if gateway_rss is None:
        out.append(("gateway RSS", "not measured", None))
    else:
        out.append(
            ("gateway RSS", f"{gateway_rss:.1f} MB (target <= {RSS_LIMIT_MB:g} MB)", gateway_rss <= RSS_LIMIT_MB)
        )
    return out


def measure_cpu(
    load: Load,
    target: str,
    server: Server,
    url: str,
    cpu_requests: int,
    cpu_streams: int,
    perf_event: str | None,
    cap: int,
) -> CpuCost:
    cost = CpuCost()
    plans = []
    if cpu_requests:
        plans.append((Workload("cpu requests", stream=False, concurrency=64), cpu_requests))
    if cpu_streams:
        plans.append((Workload("cpu streams", stream=True, concurrency=32), cpu_streams))
    for workload, count in plans:
        counter = PerfCounter(perf_event, server.pid) if perf_event else None
        before = cpu_seconds(server.pid)
        try:
            result = load.run(workload, url, cap, count=count)
        finally:
            instructions = counter.stop() if counter else None
        spent = cpu_seconds(server.pid) - before
        if result.errors:
            raise SetupError(f"{target}: {result.errors} errors during the CPU measurement {result.error_samples}")
        if workload.stream:
            cost.streams, cost.events, cost.stream_cpu_s = result.count, result.events, spent
            cost.stream_instructions = instructions
        else:
            cost.requests, cost.request_cpu_s, cost.request_instructions = result.count, spent, instructions
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against the floor (see tests/bench/README.md).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per run (wrk takes whole seconds)")
    parser.add_argument("--only", help="comma-separated workload names to run (default: all)")
    parser.add_argument("--cpu-requests", type=int, default=20000, help="requests for the CPU measurement (0: skip)")
    parser.add_argument("--cpu-streams", type=int, default=2000, help="streams for the CPU measurement (0: skip)")
    parser.add_argument("--perf-event", default="instructions", help="the perf counter reported per request")
    parser.add_argument(
        "--no-callgrind", action="store_true", help="skip the instruction counts under callgrind (default: on)"
    )
    parser.add_argument(
        "--callgrind-only", action="store_true", help="only the instruction counts under callgrind (no wrk, no rounds)"
    )
    parser.add_argument("--callgrind-requests", type=int, default=200, help="requests counted under callgrind")
    parser.add_argument("--callgrind-streams", type=int, default=100, help="streams counted under callgrind")
    parser.add_argument(
        "--no-noisy", action="store_true", help="skip the noisy neighbour row (a flooding upstream beside stream c=1)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, server logs)")
    args = parser.parse_args(argv)

    workloads = WORKLOADS
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = [n for n in wanted if n not in {w.name for w in WORKLOADS}]
        if unknown:
            parser.error(f"unknown workload(s) {unknown}; known: {[w.name for w in WORKLOADS]}")
        workloads = [w for w in WORKLOADS if w.name in wanted]
    if args.callgrind_only and args.no_callgrind:
        parser.error("--callgrind-only and --no-callgrind exclude each other")
    if args.callgrind_only and not callgrind_support()[0]:
        print(f"bench: {callgrind_support()[1]}", file=sys.stderr)
        return 1
    if shutil.which("wrk") is None and not args.callgrind_only:
        print("bench: wrk is not installed (make bench installs it: apt-get install wrk)", file=sys.stderr)
        return 1

    pin = not args.no_pin
    if pin and (shutil.which("taskset") is None or not {0, 1} <= os.sched_getaffinity(0)):
        print("bench: warning: cannot pin to cores 0 and 1 (needs taskset and 2 cores); running unpinned")
        pin = False
    if pin:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # the orchestrator stays off the measured core
    server_cpu, load_cpu = (SERVER_CPU, LOAD_CPU) if pin else (None, None)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    servers: dict[str, Server] = {}
    try:
        if args.callgrind_only:
            return _callgrind_only(args, workdir, servers, server_cpu, load_cpu)
        return _bench(args, workloads, workdir, servers, server_cpu, load_cpu, started)
    except SetupError as exc:
        print(f"\nbench: cannot measure: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers.values()):
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep:
            print(f"bench: work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _bench(
    args: argparse.Namespace,
    workloads: list[Workload],
    workdir: Path,
    servers: dict[str, Server],
    server_cpu: str | None,
    load_cpu: str | None,
    started: float,
) -> int:
    perf_ok, perf_note = perf_support(args.perf_event)
    mock_port, floor_port, gateway_port = free_port(), free_port(), free_port()
    flood_port = None if args.no_noisy else free_port()
    config = workdir / "gateway.yaml"
    config.write_text(gateway_config(gateway_port, mock_port, workdir / "data", flood_port))
    servers["mock"] = Server(
        "mock upstream",
        [PYTHON, str(BENCH_DIR / "mock_upstream.py"), "--port", str(mock_port), "--chunks", str(STREAM_CHUNKS)],
        mock_port,
        load_cpu,
        workdir / "mock.log",
        None,
    )
    servers["floor"] = Server(
        "floor",
        [PYTHON, str(BENCH_DIR / "floor.py"), "--port", str(floor_port), "--upstream", f"http://{HOST}:{mock_port}"],
        floor_port,
        server_cpu,
        workdir / "floor.log",
        None,
    )
    servers["gateway"] = Server(
        "gateway",
        [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--host", HOST, "--port", str(gateway_port)],
        gateway_port,
        server_cpu,
        workdir / "gateway.log",
        "/healthz",
    )
    if flood_port:
        servers["flood"] = Server(
            "flooding upstream",
            [PYTHON, str(BENCH_DIR / "noisy.py"), "--port", str(flood_port)],
            flood_port,
            load_cpu,
            workdir / "flood.log",
            None,
        )
    for server in servers.values():
        server.start()
    for server in servers.values():
        server.wait_ready()
    process_of = {"direct": servers["mock"], "floor": servers["floor"], "gateway": servers["gateway"]}
    print(
        f"bench: mock :{mock_port} (pid {servers['mock'].pid}), floor :{floor_port} (pid {servers['floor'].pid}), "
        f"gateway :{gateway_port} (pid {servers['gateway'].pid}); "
        + (f"servers on core {server_cpu}, mock and load on core {load_cpu}" if server_cpu else "unpinned")
    )
    load = Load(load_cpu, server_cpu)

    # Warm up and validate: every target answers every workload, without errors, with the same events.
    for workload in workloads:
        for target in workload.targets:
            r = load.run(workload, process_of[target].url(workload.path), 1, connections=min(workload.concurrency, 8))
            if r.errors or not r.count:
                raise SetupError(f"{target} fails {workload.name}: {r.errors} errors {r.error_samples}")
            if workload.stream and workload.events and r.events != r.count * workload.events:
                print(f"bench: warning: {target} {workload.name}: {r.events / r.count:.1f} events per stream")

    runs: dict[tuple[str, str], list[Result]] = {(w.name, t): [] for w in workloads for t in w.targets}
    total = args.rounds * sum(len(w.targets) for w in workloads)
    done = 0
    tty = sys.stdout.isatty()
    for round_no in range(1, args.rounds + 1):
        if not tty:
            print(f"round {round_no}/{args.rounds} ...", flush=True)
        for workload in workloads:
            for target in workload.targets:
                done += 1
                if tty:
                    print(f"\r[{done}/{total}] round {round_no}: {workload.name} -> {target}\033[K", end="", flush=True)
                result = load.run(workload, process_of[target].url(workload.path), args.duration)
                runs[(workload.name, target)].append(result)
                time.sleep(0.2)
    if tty:
        print()
    memory = {target: memory_mb(process.pid) for target, process in process_of.items()}

    costs: dict[str, CpuCost] = {}
    if args.cpu_requests or args.cpu_streams:
        print("measuring CPU per request and per stream ...", flush=True)
        for target in TARGETS:
            process = process_of[target]
            costs[target] = measure_cpu(
                load,
                target,
                process,
                process.url(CHAT_PATH),
                args.cpu_requests,
                args.cpu_streams,
                args.perf_event if perf_ok else None,
                cap=60,
            )

    neighbour = measure_noisy(gateway_port) if flood_port else None
    counts, callgrind_note, callgrind_s = run_callgrind(args, workdir, mock_port, server_cpu, load_cpu)

    try:
        metrics_status, metrics_body = http_get(gateway_port, "/metrics")
    except OSError as exc:
        metrics_status, metrics_body = str(exc), b""
    log_lines = sum(1 for _ in servers["gateway"].log.open("rb"))

    table = summarise(workloads, runs)
    print_table(workloads, table, args.rounds, args.duration)
    instr, instr_line = instructions(costs, perf_ok, perf_note, counts, callgrind_note, callgrind_s)
    if costs or instr:
        print_costs(costs, memory, args.cpu_requests, args.cpu_streams, instr, instr_line)
    else:
        print("\nRSS MB: " + ", ".join(f"{t} {memory[t][0]:.1f}" for t in TARGETS))
        print(f"instructions: {instr_line}")
    samples = sum(1 for line in metrics_body.splitlines() if line and not line.startswith(b"#"))
    metrics_note = f"on ({samples} samples at /metrics)" if metrics_status == 200 else f"/metrics: {metrics_status}"
    print(f"gateway: logging {log_lines} lines to its log, metrics {metrics_note}")

    if neighbour is not None:
        print_noisy(neighbour)

    print("\nTargets (gateway as a ratio to the floor in this run)")
    results = verdicts(workloads, table, memory["gateway"][0])
    if neighbour is not None:
        detail = f"p99 beside the flood / quiet p99 = {neighbour.p99_ratio:.2f} (target <= {NOISY_P99_LIMIT:g})"
        results.append(("noisy neighbour, stream c=1", detail, neighbour.p99_ratio <= NOISY_P99_LIMIT))
    for label, detail, ok in results:
        word = "PASS" if ok else ("FAIL" if ok is False else "SKIP")
        print(f"  {word}  {label:<30} {detail}")
    passed = sum(1 for _, _, ok in results if ok is True)
    failed = sum(1 for _, _, ok in results if ok is False)
    skipped = len(results) - passed - failed
    elapsed = time.monotonic() - started
    print(
        f"\n{passed}/{len(results)} targets met"
        + (f", {failed} FAILED" if failed else "")
        + (f", {skipped} not measured" if skipped else "")
        + f"; the bench took {elapsed:.0f} s"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rounds": args.rounds,
                    "duration": args.duration,
                    "runs": {f"{w} | {t}": [r.__dict__ for r in rs] for (w, t), rs in runs.items()},
                    "summary": {f"{w} | {t}": s.__dict__ for (w, t), s in table.items()},
                    "cpu": {t: c.__dict__ for t, c in costs.items()},
                    "instructions_callgrind": {t: c.__dict__ for t, c in counts.items()},
                    "memory_mb": {t: {"rss": m[0], "peak": m[1]} for t, m in memory.items()},
                    "noisy_neighbour": neighbour.__dict__ if neighbour is not None else None,
                    "verdicts": [{"target": label, "detail": d, "pass": ok} for label, d, ok in results],
                },
                indent=2,
            )
        )
    return 0


def measure_noisy(gateway_port: int) -> noisy.NoisyResult:
    """The noisy neighbour row: stream c=1 on the gateway, quiet and then beside a client whose
    upstream floods SSE without newlines (tests/bench/noisy.py), each for noisy.SECONDS."""
    print("measuring the noisy neighbour ...", flush=True)
    client = SequentialClient(gateway_port)
    flood_body = json.dumps({**STREAM_BODY, "model": noisy.FLOOD_MODEL}).encode()
    try:
        return noisy.measure(HOST, gateway_port, CHAT_PATH, flood_body, lambda: client.streams(1))
    finally:
        client.close()


def print_noisy(n: noisy.NoisyResult) -> None:
    print("\nNoisy neighbour: the gateway at stream c=1, alone, then beside a client whose upstream floods")
    print("SSE without newlines")
    print(f"{'phase':<14} {'streams':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'quiet':<14} {n.quiet_streams:>8} {n.quiet_p50_ms:>8.2f} {n.quiet_p99_ms:>8.2f}")
    print(f"{'beside flood':<14} {n.noisy_streams:>8} {n.noisy_p50_ms:>8.2f} {n.noisy_p99_ms:>8.2f}")
    print(f"the neighbour's requests meanwhile: {n.flood_requests} (each refused at a cap: a 502 after ~4 MiB read)")


def run_callgrind(
    args: argparse.Namespace, workdir: Path, mock_port: int, server_cpu: str | None, load_cpu: str | None
) -> tuple[dict[str, InstrCount], str, float]:
    """The instruction counts, unless skipped or impossible: (counts, why there are none, seconds taken).
    A failure here does not stop the bench: the table then says why the counts are missing."""
    if args.no_callgrind:
        return {}, "skipped (--no-callgrind)", 0.0
    ok, note = callgrind_support()
    if not ok:
        return {}, note, 0.0
    print(
        f"counting instructions under callgrind ({args.callgrind_requests} requests, {args.callgrind_streams} "
        "streams per server, one at a time) ...",
        flush=True,
    )
    began = time.monotonic()
    try:
        counts = measure_callgrind(
            workdir / "callgrind", mock_port, args.callgrind_requests, args.callgrind_streams, server_cpu, load_cpu
        )
    except (SetupError, OSError, subprocess.SubprocessError) as exc:
        if args.callgrind_only:
            raise SetupError(f"callgrind: {exc}") from exc
        print(f"bench: warning: callgrind failed: {exc}", file=sys.stderr)
        return {}, f"failed ({str(exc).splitlines()[0].rstrip(':')})", time.monotonic() - began
    for target, count in counts.items():
        if count.streams and count.events != count.streams * EVENTS_PER_STREAM:
            print(f"bench: warning: {target} under callgrind: {count.events / count.streams:.1f} events per stream")
    return counts, "", time.monotonic() - began


def _callgrind_only(
    args: argparse.Namespace, workdir: Path, servers: dict[str, Server], server_cpu: str | None, load_cpu: str | None
) -> int:
    """`--callgrind-only`: the mock upstream and the instruction counts, nothing else."""
    started = time.monotonic()
    mock_port = free_port()
    servers["mock"] = Server(
        "mock upstream",
        [PYTHON, str(BENCH_DIR / "mock_upstream.py"), "--port", str(mock_port), "--chunks", str(STREAM_CHUNKS)],
        mock_port,
        load_cpu,
        workdir / "mock.log",
        None,
    )
    servers["mock"].start()
    servers["mock"].wait_ready()
    counts, _, callgrind_s = run_callgrind(args, workdir, mock_port, server_cpu, load_cpu)
    instr, instr_line = instructions({}, False, "", counts, "", callgrind_s)
    print_costs({}, {}, 0, 0, instr, instr_line)
    print(f"\nthe bench took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"instructions_callgrind": {t: c.__dict__ for t, c in counts.items()}}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
