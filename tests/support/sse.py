"""Server-sent events as the tests read them: an httpx stream parsed into messages and comments,
and `dora api` processes of their own (for streams served by one process, written by another)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.jobs import wait_for
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Message:
    id: str | None
    data: str | None
    comment: str | None = None  # a `: ping` line is Message(comment="ping")
    at: float = 0.0  # time.monotonic() when it was parsed


class Stream:
    """One open `text/event-stream` response, read message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.ended = False

    def next(self) -> Message:
        """The next message or comment (raises httpx.ReadTimeout past the client's read timeout,
        StopIteration once the response ended)."""
        event_id = data = None
        for line in self.lines:
            if line == "":
                if event_id is not None or data is not None:
                    return Message(event_id, data, at=time.monotonic())
                continue
            if line.startswith(":"):
                if event_id is None and data is None:
                    return Message(None, None, comment=line[1:].strip(), at=time.monotonic())
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "data":
                data = value if data is None else f"{data}\n{value}"
        self.ended = True
        raise StopIteration

    def messages(self, count: int) -> list[Message]:
        """The next `count` messages with data, skipping comments."""
        got = []
        while len(got) < count:
            message = self.next()
            if message.data is not None:
                got.append(message)
        return got

    def until_done(self) -> list[Message]:
        """Every data message up to `data: [DONE]` (not included); asserts the response then ends."""
        got = []
        while (message := self.next()).data != "[DONE]":
            if message.data is not None:
                got.append(message)
        try:
            extra = self.next()
        except StopIteration:
            return got
        raise AssertionError(f"the stream went on after [DONE]: {extra}")


@contextmanager
def open_stream(base_url: str, key: str, path: str, *, headers: dict | None = None, params: dict | None = None,
                read_timeout: float = 5.0) -> Iterator[Stream]:
    """GET `path` as a stream; asserts a 200 text/event-stream."""
    timeout = httpx.Timeout(5.0, read=read_timeout)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        with client.stream("GET", path, params={"stream": "true"} | (params or {}),
                           headers={"Authorization": f"Bearer {key}"} | (headers or {})) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream"), response.headers
            yield Stream(response)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def api_processes(count: int, env: dict, log_dir: Path) -> Iterator[list[str]]:
    """`count` separate `dora api` processes with `env` (DORA_* settings) on free ports; their URLs."""
    processes, urls = [], []
    try:
        for index in range(count):
            port = free_port()
            log = open(log_dir / f"api-{index}.log", "wb")
            processes.append((subprocess.Popen([sys.executable, "-m", "dora_cli.main", "api", "--port", str(port)],
                                               cwd=ROOT, env=os.environ | env, stdout=log,
                                               stderr=subprocess.STDOUT), log_dir / f"api-{index}.log"))
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        for url, (process, log_path) in zip(urls, processes, strict=True):
            wait_for(lambda url=url, process=process: _healthy(url) or process.poll() is not None, timeout=60,
                     what=f"the API at {url}")
            assert process.poll() is None, log_path.read_text(errors="replace")
        yield urls
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
