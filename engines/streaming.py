"""Text deltas of a request as it is decoded: what a streaming caller is handed after each step.

A :class:`TextDeltas` is told the generated ids after every decode step (:meth:`step`) and
calls its sink with the text that became final since the last call. Decoding the whole
completion each time (not token by token) keeps multi-token characters and the tokenizer's
spacing right; text that may still change is held back:

* a trailing U+FFFD (the first bytes of a character whose last byte is not decoded yet);
* with stop strings, the last ``longest stop - 1`` characters (they may start a stop string,
  which is never sent).

:meth:`finish` sends what is left of the final text, so the deltas always join up to the
result's ``text``. A sink that raises is dropped (logged), never failing the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

__all__ = ["TextDeltas", "TextSink"]

TextSink = Callable[[str], None]


class TextDeltas:
    __slots__ = ("sink", "decode", "hold", "sent", "ended")

    def __init__(self, sink: TextSink, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self.sink: TextSink | None = sink
        self.decode = decode
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""  # the text handed to the sink so far
        self.ended = False

    def step(self, ids: list[int]) -> None:
        """After a decode step: send the new final text of ``ids`` (the completion so far)."""
        if self.sink is None or self.ended:
            return
        text = self.decode(ids).rstrip("\ufffd")
        if self.hold:
            text = text[:max(0, len(text) - self.hold)]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self._send(text[len(self.sent):])
            self.sent = text

    def finish(self, text: str) -> None:
        """The request ended with ``text``: send the rest of it (once)."""
        if self.sink is None or self.ended:
            return
        self.ended = True
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self._send(text[len(self.sent):])
        self.sent = text

    def _send(self, delta: str) -> None:
        try:
            self.sink(delta)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a broken listener must not fail the batch
            log.exception("text sink failed; the rest of this request's deltas are dropped")
            self.sink = None
