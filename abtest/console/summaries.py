"""What the console's pages show beside the services' own data: the list's recommendation badges
(from the typed report, cached briefly per experiment version so the list stays cheap), the
report's CSS scoped to the embedded report, and the ready-to-paste client snippets."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..reports import ReportOptions, build_report
from ..reports.html import REPORT_CSS

__all__ = ["Badge", "BadgeCache", "scoped_report_css", "snippets"]


@dataclass(frozen=True)
class Badge:
    action: str  # the recommendation's action ("ship", "keep running", ...), or "" before any data
    headline: str

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "headline": self.headline}


class BadgeCache:
    """Experiment key -> its report's recommendation, rebuilt at most every ``ttl_s`` seconds or
    when the experiment's version changes. Drafts have none (no report before the start)."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, int, Badge]] = {}
        self._lock = threading.Lock()

    def badge(self, session: Any, view: dict[str, Any]) -> Badge | None:
        if view["status"] == "draft":
            return None
        key, version, now = view["key"], int(view["version"]), time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[1] == version and now - hit[0] < self.ttl_s:
            return hit[2]
        try:
            report = build_report(session, key, ReportOptions())
            badge = Badge(report.recommendation.action, report.headline)
        except Exception:  # noqa: BLE001 - a report that cannot be built leaves the list readable
            badge = Badge("unavailable", "the report cannot be built now; open the experiment for details")
        with self._lock:
            if len(self._entries) > 1000:
                self._entries.clear()
            self._entries[key] = (now, version, badge)
        return badge


_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def scoped_report_css(scope: str = "#live-report") -> str:
    """The HTML report's stylesheet with every selector under ``scope`` (its page-level rules,
    such as ``body``, then style nothing outside the embedded report)."""
    out = []
    for selectors, body in _RULE.findall(REPORT_CSS):
        scoped = ",".join(f"{scope} {s.strip()}" for s in selectors.split(",") if s.strip())
        out.append(f"{scoped}{{{body}}}")
    return "\n".join(out) + "\n"


def snippets(base_url: str, view: dict[str, Any]) -> dict[str, str]:
    """Python snippets that call this experiment: abtest's SDK, and an OpenAI client."""
    key = view["key"]
    events = [m["event"] for m in view.get("metrics", []) if m.get("event")]
    event = events[0] if events else "conversion"
    base = base_url.rstrip("/")
    sdk = (f'from abtest.client import Client\n\n'
           f'client = Client("{base}", api_key=SDK_KEY)  # an sdk-scoped key\n'
           f'result = client.infer("{key}", "user-42", "Write a Python function that adds two numbers.",\n'
           f'                      max_new_tokens=64)\n'
           f'print(result.variant, result.text)\n'
           f'client.track("user-42", "{event}", request_id=result.request_id, experiment="{key}")\n'
           f'client.close()  # sends the queued events\n')
    openai = (f'from openai import OpenAI\n\n'
              f'client = OpenAI(base_url="{base}/v1", api_key=SDK_KEY)\n'
              f'reply = client.chat.completions.create(\n'
              f'    model="{key}",  # the experiment key\n'
              f'    user="user-42",  # the unit: its variant is sticky\n'
              f'    messages=[{{"role": "user", "content": "Write a Python function that adds two numbers."}}],\n'
              f'    max_tokens=64,\n'
              f')\n'
              f'print(reply.choices[0].message.content)\n')
    return {"sdk": sdk, "openai": openai}
