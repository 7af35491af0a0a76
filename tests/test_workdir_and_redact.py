"""The private work directory's owner record and stale clean-up, and error messages without
the server's paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagserve.engine import workdir
from dagserve.engine.redact import PathRedactor


def test_stale_work_dirs_of_dead_owners_are_removed_live_and_unknown_ones_kept(tmp_path):
    dead = tmp_path / "dagserve-dead"
    live = tmp_path / "dagserve-live"
    unknown = tmp_path / "dagserve-unknown"  # no owner record (an older version): left alone
    reused = tmp_path / "dagserve-reused"  # our pid, but another start time: a reused pid
    for path in (dead, live, unknown, reused):
        (path / "models").mkdir(parents=True)
    (dead / workdir.OWNER_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "start": "1"}))
    me = {"pid": os.getpid(), "start": workdir._start_time(os.getpid())}
    (live / workdir.OWNER_FILE).write_text(json.dumps(me))
    (reused / workdir.OWNER_FILE).write_text(json.dumps({**me, "start": "0"}))
    removed = workdir.remove_stale(tmp_path)
    assert sorted(removed) == sorted([dead, reused])
    assert live.exists() and unknown.exists() and not dead.exists() and not reused.exists()


def test_paths_are_replaced_on_path_boundaries_only():
    redact = PathRedactor([("<work_dir>", "/tmp/dagserve-x1"), ("<server>", "/tmp"),
                           ("<model_store>", Path("/srv/store"))])
    assert redact("Invalid archive a.mar: /srv/store/a.mar: not a zip") == \
        "Invalid archive a.mar: <model_store>/a.mar: not a zip"
    assert redact("in /tmp/dagserve-x1/models/a-1 (see '/tmp')") == \
        "in <work_dir>/models/a-1 (see '<server>')"
    assert redact("/tmpfile and /srv/storefront stay") == "/tmpfile and /srv/storefront stay"
    assert redact("no path at all") == "no path at all"
