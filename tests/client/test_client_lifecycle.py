"""Events tracked but never flushed are delivered at interpreter exit and at GC."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import httpx

from abtest.client import Client

from sdk_fakes import API_KEY, BASE_URL, FakeEventServer

EXIT_SCRIPT = textwrap.dedent(
    """
    import json, sys, httpx
    from abtest.client import Client

    out = open(sys.argv[1], "a")

    def handler(request):
        events = json.loads(request.content)["events"]
        for event in events:
            out.write(event["event_id"] + "\\n")
        out.flush()
        return httpx.Response(202, json={"accepted": len(events), "duplicates": 0, "rejected": []})

    client = Client("http://127.0.0.1:9", "k", transport=httpx.MockTransport(handler),
                    batch_size=100, flush_interval=3600)
    for i in range(250):
        print(client.track(f"u{i}", "purchase"))
    # no flush(), no close(): the atexit hook must deliver all 250
    """
)


def test_atexit_delivers_unflushed_events(tmp_path: Path) -> None:
    received = tmp_path / "received.txt"
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(received)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    tracked = proc.stdout.split()
    assert len(tracked) == 250
    assert sorted(received.read_text().split()) == sorted(tracked)


def test_garbage_collected_client_flushes_and_is_not_kept_alive() -> None:
    server = FakeEventServer()
    client = Client(BASE_URL, API_KEY, transport=httpx.MockTransport(server.handler), flush_interval=3600)
    ids = {client.track("u", "view") for _ in range(10)}
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None  # neither the sender thread nor the atexit hook holds the client
    assert set(server.store) == ids
