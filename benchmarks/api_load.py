"""API load: N concurrent clients create and poll fine-tuning jobs over loopback (PostgreSQL).

Starts `uvicorn api.app:create_app` in a subprocess against a fresh PostgreSQL database
(migrated by Alembic, dropped afterwards), uploads one dataset, then runs N clients at once:
each creates jobs (a unique Idempotency-Key each, plus one deliberate retry; all clients at
once), then, once every client has created its jobs, polls
`GET /v1/fine_tuning/jobs/{id}` every `--poll-interval` seconds (0 = back to back: then
latency is just concurrency / throughput, and the run measures saturation instead).
Prints one JSON line: p50/p99 latency per operation, errors,
whether every created job is stored exactly once, and the server's CPU time per GET during the
polling phase (all its processes, from /proc: the part of the cost that other load on a shared
machine does not distort the way it distorts p99). Measured, not asserted (target: p99 of
GET < 50 ms at 50 clients, zero errors).

    python benchmarks/api_load.py --clients 50 --jobs 2 --polls 40 --poll-interval 0.5 --server-workers 2

Two more modes measure what a burst and slow clients do to everyone else (issue [reliability]):

    python benchmarks/api_load.py --mode burst           # 100 creates at once on a cold key cache
    python benchmarks/api_load.py --mode slow-uploads    # 50 uploads at 1 byte/s beside 50 pollers
    python benchmarks/api_load.py --mode slow-downloads  # 40 stalled downloads beside 50 pollers

`burst`: every client opens its connection, then all create at the same instant, just after the
key cache expired, through a small database pool (`--pool-size`), so every request needs a key
lookup and a connection at once. `slow-uploads`: one tenant's uploads trickle their bodies while
another tenant's clients poll a job; each prints 5xx counts and latencies (target: 0 x 5xx,
polls p99 < 100 ms while the uploads trickle). `slow-downloads` (issue [reliability-3]): one tenant
opens `--slow-downloads` downloads of a 16 MiB file and reads nothing past the response head, for
`--stall-seconds`, while another tenant's clients poll a job and fetch a small file; it prints
their latencies, 5xx counts, what the stalled downloads were answered (200, or 429 past
DORA_MAX_DOWNLOADS_PER_TENANT, which this mode turns off unless `--download-cap` sets it) and the
server's sessions `idle in transaction` while they stall (it was one per download: 0 is the target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# burst: the key cache lives this long, so the burst can arrive just after it expired
BURST_CACHE_SECONDS = 1.0
# server settings per mode (the tenant caps are raised so the load measures the server, not the quota)
UNCAPPED = {"DORA_MAX_ACTIVE_JOBS_PER_TENANT": "0", "DORA_RATE_LIMIT_PER_MINUTE": "0"}
MODE_SETTINGS = {
    "steady": UNCAPPED,
    "burst": UNCAPPED | {"DORA_AUTH_CACHE_SECONDS": str(BURST_CACHE_SECONDS)},
    "slow-uploads": UNCAPPED,
    "slow-downloads": UNCAPPED | {"DORA_MAX_DOWNLOADS_PER_TENANT": "0"},
}
BIG_DOWNLOAD_ROWS = 170_000  # rows of CHAT_ROW: a 16 MiB dataset, far more than the socket buffers hold
CHAT_ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("steady", "burst", "slow-uploads", "slow-downloads"), default="steady")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--burst", type=int, default=100, help="burst mode: creates sent at once")
    parser.add_argument("--slow-uploads", type=int, default=50, help="slow-uploads mode: trickling uploads")
    parser.add_argument("--trickle-seconds", type=float, default=20.0, help="slow-uploads mode: how long they trickle")
    parser.add_argument("--slow-downloads", type=int, default=40, help="slow-downloads mode: stalled downloads")
    parser.add_argument("--stall-seconds", type=float, default=15.0, help="slow-downloads mode: how long they stall")
    parser.add_argument("--download-cap", type=int, default=None,
                        help="slow-downloads mode: the server's DORA_MAX_DOWNLOADS_PER_TENANT (default: no cap)")
    parser.add_argument("--pool-size", type=int, default=None, help="the server's DORA_DB_POOL_SIZE (no overflow)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs created per client")
    parser.add_argument("--polls", type=int, default=40, help="GET job requests per client")
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="seconds a client waits between polls (0: back to back, i.e. saturation)")
    parser.add_argument("--server-workers", type=int, default=2, help="uvicorn worker processes (`dora api --workers`)")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14",
                        help="where job messages go (a Redis database of its own; its `gpu` list is removed after)")
    return parser.parse_args()


def create_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"dora_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name, "postgresql+psycopg://" + admin_url.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(env: dict, port: int, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    server = subprocess.Popen(command, cwd=ROOT, env=os.environ | env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the API server did not start")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its children (uvicorn's workers), Linux only."""
    pids, total = {pid}, 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                pids.update(int(child) for child in children.read().split())
        for each in pids:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return total


class Recorder:
    def __init__(self, server_pid: int | None = None) -> None:
        self.latency: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.server_pid = server_pid
        self.poll_cpu_start: float | None = None
        self.server_cpu_ms_per_get: float | None = None

    async def call(self, name: str, request) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await request
        except httpx.HTTPError as error:
            self.errors.append(f"{name}: {type(error).__name__}")
            return None
        self.latency.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            self.errors.append(f"{name}: HTTP {response.status_code} {response.text[:200]}")
            return None
        return response

    def summary(self, name: str, wall: float) -> dict:
        values = sorted(self.latency.get(name, []))
        if not values:
            return {"count": 0}
        return {"count": len(values), "p50_ms": round(statistics.median(values), 2),
                "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
                "max_ms": round(values[-1], 2), "per_s": round(len(values) / wall, 1)}


async def one_client(http: httpx.AsyncClient, recorder: Recorder, *, file_id: str, jobs: int, polls: int,
                     interval: float, created: dict[str, str], barrier: asyncio.Barrier) -> None:
    """Phase 1: all clients create their jobs at once (a burst). Phase 2: all poll them."""
    ids = []
    for index in range(jobs):
        key = f"load-{uuid.uuid4().hex}"
        body = {"model": "tiny-llama", "training_file": file_id,
                "method": {"type": "dora", "dora": {"rank": 8, "hyperparameters": {"max_steps": 10}}}}
        response = await recorder.call("create_job", http.post("/v1/fine_tuning/jobs", json=body,
                                                               headers={"Idempotency-Key": key}))
        if response is None:
            continue
        job_id = response.json()["id"]
        created[key] = job_id
        ids.append(job_id)
        if index == 0:  # a client retrying after a lost response must get the same job back
            retry = await recorder.call("create_job_retry", http.post("/v1/fine_tuning/jobs", json=body,
                                                                      headers={"Idempotency-Key": key}))
            if retry is not None and retry.json()["id"] != job_id:
                recorder.errors.append("idempotent retry returned a different job")
    if await barrier.wait() == 0 and recorder.server_pid:  # one client notes where polling starts
        recorder.poll_cpu_start = cpu_seconds(recorder.server_pid)
    await asyncio.sleep(random.uniform(0, interval))  # pollers spread out, not in lockstep
    for poll in range(polls if ids else 0):
        await recorder.call("get_job", http.get(f"/v1/fine_tuning/jobs/{ids[poll % len(ids)]}"))
        if interval:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))


async def run_clients(base_url: str, key: str, args: argparse.Namespace,
                      server_pid: int | None = None) -> tuple[Recorder, dict, float]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as http:
        upload = await http.post("/v1/files", files={"file": ("train.jsonl", CHAT_ROW * 20)},
                                 data={"purpose": "fine-tune"})
        upload.raise_for_status()
        for _ in range(20):  # warm the server's connection pool and code paths
            await http.get("/v1/fine_tuning/jobs", params={"limit": 1})
        recorder, created, barrier = Recorder(server_pid), {}, asyncio.Barrier(args.clients)
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http, recorder, file_id=upload.json()["id"], jobs=args.jobs,
                                          polls=args.polls, interval=args.poll_interval, created=created,
                                          barrier=barrier)
                               for _ in range(args.clients)))
        if recorder.poll_cpu_start is not None and (end := cpu_seconds(server_pid)) is not None:
            polls = len(recorder.latency.get("get_job", [])) or 1
            recorder.server_cpu_ms_per_get = round(1000 * (end - recorder.poll_cpu_start) / polls, 3)
        return recorder, created, time.perf_counter() - started


async def run_burst(base_url: str, key: str, args: argparse.Namespace) -> dict:
    """`args.burst` clients connect, wait for the key cache to expire, then all create at once."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as setup:
        upload = await setup.post("/v1/files", files={"file": ("train.jsonl", CHAT_ROW * 20)},
                                  data={"purpose": "fine-tune"})
        upload.raise_for_status()
    recorder, connected = Recorder(), asyncio.Barrier(args.burst + 1)
    body = {"model": "tiny-llama", "training_file": upload.json()["id"],
            "method": {"type": "dora", "dora": {"hyperparameters": {"max_steps": 10}}}}
    statuses: list[int] = []

    async def one() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
            await http.get("/healthz")  # connected: the creates then arrive together
            await connected.wait()
            started = time.perf_counter()
            try:
                response = await http.post("/v1/fine_tuning/jobs", json=body)
            except httpx.HTTPError as error:
                recorder.errors.append(f"create_job: {type(error).__name__}")
                return
            recorder.latency.setdefault("create_job", []).append((time.perf_counter() - started) * 1000)
            statuses.append(response.status_code)

    tasks = [asyncio.create_task(one()) for _ in range(args.burst)]
    await asyncio.sleep(BURST_CACHE_SECONDS + 0.5)  # every client connected, the cached key expired
    started = time.perf_counter()
    await connected.wait()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    return {"burst": args.burst, "statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
            "server_errors_5xx": sum(1 for code in statuses if code >= 500), "transport_errors": len(recorder.errors),
            "create_job": recorder.summary("create_job", wall), "wall_s": round(wall, 2)}


async def _poll(http: httpx.AsyncClient, recorder: Recorder, calls: dict[str, str], *, started: float,
                seconds: float, interval: float) -> None:
    """One other tenant's client: GET each of `calls` (name -> path) every ~`interval` s until 2 s before
    `seconds` after `started` (the slow requests are still held then), starting at a random offset."""
    await asyncio.sleep(random.uniform(0, interval))
    while time.perf_counter() - started < seconds - 2.0:
        for name, path in calls.items():
            await recorder.call(name, http.get(path))
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))


async def _trickle_upload(host: str, port: int, key: str, stop: asyncio.Event) -> str:
    """A multipart upload sending one byte a second; returns how it ended."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000000\r\n\r\n"
            '--xyz\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n')
    writer.write(head.encode())
    try:
        while not stop.is_set():
            writer.write(b"{")
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        return "trickled"
    except OSError as error:
        return f"closed: {type(error).__name__}"
    finally:
        writer.close()


async def run_slow_uploads(base_url: str, upload_key: str, poll_key: str, args: argparse.Namespace) -> dict:
    """`args.slow_uploads` uploads trickle for `args.trickle_seconds` while `args.clients` poll."""
    host, port = base_url.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {poll_key}"}, limits=limits,
                                 timeout=30) as http:
        upload = await http.post("/v1/files", files={"file": ("train.jsonl", CHAT_ROW * 20)},
                                 data={"purpose": "fine-tune"})
        upload.raise_for_status()
        job = await http.post("/v1/fine_tuning/jobs",
                              json={"model": "tiny-llama", "training_file": upload.json()["id"]})
        job.raise_for_status()
        job_id = job.json()["id"]
        stop = asyncio.Event()
        uploads = [asyncio.create_task(_trickle_upload(host, int(port), upload_key, stop))
                   for _ in range(args.slow_uploads)]
        await asyncio.sleep(2.0)  # every upload is in, authenticated and streaming
        recorder, started = Recorder(), time.perf_counter()

        calls = {"get_job": f"/v1/fine_tuning/jobs/{job_id}"}
        await asyncio.gather(*(_poll(http, recorder, calls, started=started, seconds=args.trickle_seconds,
                                     interval=args.poll_interval) for _ in range(args.clients)))
        wall = time.perf_counter() - started
        stop.set()
        endings = await asyncio.gather(*uploads)
    server_errors = sum(1 for e in recorder.errors if " HTTP 5" in e)
    return {"slow_uploads": args.slow_uploads, "upload_endings": {e: endings.count(e) for e in set(endings)},
            "pollers": args.clients, "get_job": recorder.summary("get_job", wall), "server_errors_5xx": server_errors,
            "errors": len(recorder.errors), "error_samples": recorder.errors[:5], "wall_s": round(wall, 2)}


async def _stalled_download(host: str, port: int, key: str, path: str, stop: asyncio.Event) -> str:
    """A GET that reads the response head, then nothing until told to stop; returns its status (or how it
    failed). A small receive buffer and the stream reader's own limit leave the body in the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as error:
        sock.close()
        return f"connect: {type(error).__name__}"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        await stop.wait()
        return head.split(b" ", 2)[1].decode()
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        return f"failed: {type(error).__name__}"
    finally:
        writer.close()


def idle_in_transaction(admin_url: str, database: str) -> int:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        return connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                  "AND state = 'idle in transaction'", (database,)).fetchone()[0]


async def run_slow_downloads(base_url: str, download_key: str, poll_key: str, args: argparse.Namespace,
                             database: str) -> dict:
    """`args.slow_downloads` downloads stall for `args.stall_seconds` while `args.clients` poll."""
    host, port = base_url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {download_key}"},
                                 timeout=120) as owner:
        big = await owner.post("/v1/files", files={"file": ("big.jsonl", CHAT_ROW * BIG_DOWNLOAD_ROWS)},
                               data={"purpose": "fine-tune"})
        big.raise_for_status()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {poll_key}"}, limits=limits,
                                 timeout=30) as http:
        upload = await http.post("/v1/files", files={"file": ("train.jsonl", CHAT_ROW * 20)},
                                 data={"purpose": "fine-tune"})
        upload.raise_for_status()
        small_id = upload.json()["id"]
        job = await http.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": small_id})
        job.raise_for_status()
        job_id = job.json()["id"]
        stop = asyncio.Event()
        downloads = [asyncio.create_task(_stalled_download(host, int(port), download_key,
                                                           f"/v1/files/{big.json()['id']}/content", stop))
                     for _ in range(args.slow_downloads)]
        await asyncio.sleep(2.0)  # every download has its head and is blocked on its client
        stuck = await asyncio.to_thread(idle_in_transaction, args.pg_admin_url, database)
        recorder, started = Recorder(), time.perf_counter()

        calls = {"get_job": f"/v1/fine_tuning/jobs/{job_id}", "get_file_content": f"/v1/files/{small_id}/content"}
        await asyncio.gather(*(_poll(http, recorder, calls, started=started, seconds=args.stall_seconds,
                                     interval=args.poll_interval) for _ in range(args.clients)))
        wall = time.perf_counter() - started
        stop.set()
        statuses = await asyncio.gather(*downloads)
    server_errors = sum(1 for e in recorder.errors if " HTTP 5" in e)
    return {"slow_downloads": args.slow_downloads, "download_cap": args.download_cap,
            "download_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
            "idle_in_transaction_while_stalled": stuck, "pollers": args.clients,
            "get_job": recorder.summary("get_job", wall),
            "get_file_content": recorder.summary("get_file_content", wall), "server_errors_5xx": server_errors,
            "errors": len(recorder.errors), "error_samples": recorder.errors[:5], "wall_s": round(wall, 2)}


def check_stored_once(database_url: str, created: dict[str, str]) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, idempotency_key FROM jobs")).all()
    engine.dispose()
    by_key: dict[str, list[str]] = {}
    for job_id, key in rows:
        by_key.setdefault(key, []).append(job_id)
    exact = all(by_key.get(key) == [job_id] for key, job_id in created.items())
    return {"jobs_created": len(created), "jobs_in_db": len(rows),
            "stored_exactly_once": exact and len(rows) == len(created)}


def clear_queue(broker_url: str) -> None:
    try:
        import redis

        redis.Redis.from_url(broker_url).delete("gpu")
    except Exception:  # noqa: BLE001 - best effort: the benchmark's own database only
        pass


def main() -> int:
    args = parse_args()
    from store.db import session_scope
    from store.migrate import upgrade
    from store.settings import Settings
    from store.tenants import create_api_key

    load_before = round(os.getloadavg()[0], 2)
    name, database_url = create_database(args.pg_admin_url)
    server = None
    try:
        with tempfile.TemporaryDirectory() as storage:
            env = {"DORA_DATABASE_URL": database_url, "DORA_BROKER_URL": args.broker_url,
                   "DORA_STORAGE_URL": storage, "DORA_BASE_MODELS": json.dumps({"tiny-llama": "./tiny"})}
            settings = Settings(**{k.removeprefix("DORA_").lower(): v for k, v in env.items()
                                   if k != "DORA_BASE_MODELS"})
            upgrade(settings)
            with session_scope(settings) as session:
                key = create_api_key(session, tenant_name="load").key
                other_key = create_api_key(session, tenant_name="load-pollers").key
            env |= MODE_SETTINGS[args.mode]
            if args.pool_size:
                env |= {"DORA_DB_POOL_SIZE": str(args.pool_size), "DORA_DB_MAX_OVERFLOW": "0"}
            if args.mode == "slow-downloads" and args.download_cap is not None:
                env |= {"DORA_MAX_DOWNLOADS_PER_TENANT": str(args.download_cap)}
            port = free_port()
            server = start_server(env, port, args.server_workers)
            base_url = f"http://127.0.0.1:{port}"
            common = {"benchmark": "api_load", "mode": args.mode, "database": "postgresql",
                      "server_workers": args.server_workers, "pool_size": args.pool_size, "cpus": os.cpu_count(),
                      "load_avg_1m_before": load_before}
            if args.mode == "burst":
                result = common | asyncio.run(run_burst(base_url, key, args)) | check_jobs_unique(database_url)
                result["load_avg_1m"] = round(os.getloadavg()[0], 2)
                return _print(result)
            if args.mode == "slow-uploads":
                result = common | asyncio.run(run_slow_uploads(base_url, key, other_key, args))
                result["load_avg_1m"] = round(os.getloadavg()[0], 2)
                return _print(result)
            if args.mode == "slow-downloads":
                result = common | asyncio.run(run_slow_downloads(base_url, key, other_key, args, name))
                result["load_avg_1m"] = round(os.getloadavg()[0], 2)
                return _print(result)
            recorder, created, wall = asyncio.run(run_clients(base_url, key, args, server.pid))
            result = {
                "benchmark": "api_load", "database": "postgresql", "clients": args.clients,
                "poll_interval_s": args.poll_interval, "server_workers": args.server_workers,
                "cpus": os.cpu_count(), "load_avg_1m_before": load_before, "load_avg_1m": round(os.getloadavg()[0], 2),
                "wall_s": round(wall, 2), "pre_ping": settings.db_pool_pre_ping,
                "get_job": recorder.summary("get_job", wall), "server_cpu_ms_per_get": recorder.server_cpu_ms_per_get,
                "create_job": recorder.summary("create_job", wall),
                "create_job_retry": recorder.summary("create_job_retry", wall),
                "errors": len(recorder.errors), "error_samples": recorder.errors[:5],
                **check_stored_once(database_url, created),
            }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        clear_queue(args.broker_url)
        from store.db import dispose_engines

        dispose_engines()
        drop_database(args.pg_admin_url, name)
    return _print(result)


def _print(result: dict) -> int:
    print(json.dumps(result), flush=True)
    return 0


def check_jobs_unique(database_url: str) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM jobs")).scalar()
    engine.dispose()
    return {"jobs_in_db": count}


if __name__ == "__main__":
    sys.exit(main())
