"""Which ranks a multi-GPU job really ran: worker.ranks.RankProgress, also recording each rank.

The worker hands train_in_processes a RankProgress, which every rank calls (in the rank, before
its process group starts) to make its callbacks. RecordedRankProgress makes the same callbacks
and first writes `records/rank-<RANK>.json`: the rank, the WORLD_SIZE the launcher gave it and its
process id. A test puts it in place of worker.ranks.RankProgress (worker/job.py imports that name
when a job starts), e.g. with functools.partial(RecordedRankProgress, records=folder). It lives in
a module of its own because the ranks are spawned: it reaches them pickled, by module path, and a
rank imports this small module only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from worker.ranks import RankProgress


@dataclass(frozen=True)
class RecordedRankProgress(RankProgress):
    records: Path = field(kw_only=True)  # after RankProgress's fields with defaults

    def __call__(self) -> list:
        rank = int(os.environ["RANK"])
        record = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "pid": os.getpid()}
        (Path(self.records) / f"rank-{rank}.json").write_text(json.dumps(record))
        return super().__call__()


def rank_records(records: Path) -> list[dict]:
    """The records the ranks wrote into `records`, by rank."""
    return sorted((json.loads(path.read_text()) for path in Path(records).glob("rank-*.json")),
                  key=lambda record: record["rank"])
