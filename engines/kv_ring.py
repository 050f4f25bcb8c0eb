"""The KV cache of a sliding-window layer as a ring: W entries, slot ``s`` at index ``s % W``.

A layer with window W reads only the last W slots, so once a sequence is longer than W its
cache keeps just those (:meth:`engines.decoder.DecoderRunner.new_cache` gives such a layer
``min(length, W)`` entries). Keys are stored after rotary, so attention over the ring, whose
order is not the sequence's, gives the same result; the masks below say which entries are
valid. While a sequence is shorter than W, index and slot coincide and the plain path runs.
"""

from __future__ import annotations

import torch

__all__ = ["ring_step", "ragged_ring_valid"]


def ring_step(kc, vc, ks, vs, start: int, end: int, key_valid, W: int, masks: dict, make_mask):
    """One layer's step over a ring ``kc``/``vc`` [B, Hkv, R, D] shorter than ``end``: store
    the new keys ``ks``/``vs`` [B, Hkv, q, D] of slots start..end-1 and return what the
    queries attend to, with its mask (cached in ``masks`` for the other layers of the window).

    Decode (q = 1): the ring itself, which then holds exactly the window (R == W); masked only
    where left padding (``key_valid`` [B, T], by slot) is held. Prefill chunk: the ring's slots
    still in the first query's window, in order, then the chunk's own keys; the ring keeps the
    chunk's last R slots. ``make_mask(B, q, start, end, kstart, key_valid, W)`` builds the
    causal, window and padding mask over slots kstart..end-1.
    """
    R, q = kc.shape[2], ks.shape[2]
    dev = kc.device
    if q == 1:
        kc[:, :, (end - 1) % R] = ks[:, :, 0]
        vc[:, :, (end - 1) % R] = vs[:, :, 0]
        if ("ring", W) not in masks:
            mask = None
            if key_valid is not None:  # entry i holds slot end-1 - ((end-1 - i) mod R)
                held = (end - 1) - (end - 1 - torch.arange(R, device=dev)) % R
                mask = key_valid.index_select(1, held)[:, None, None, :]
            masks[("ring", W)] = mask
        return kc, vc, masks[("ring", W)]
    lo = max(0, start - (W - 1))  # the first query (slot ``start``) reads slots lo..start
    held = torch.arange(lo, start, device=dev) % R
    keys = torch.cat((kc.index_select(2, held), ks), 2)
    values = torch.cat((vc.index_select(2, held), vs), 2)
    if ("ring", W) not in masks:
        masks[("ring", W)] = make_mask(ks.shape[0], q, start, end, lo, key_valid, W)
    first = max(start, end - R)  # the chunk's slots the ring keeps
    kept = torch.arange(first, end, device=dev) % R
    kc.index_copy_(2, kept, ks[:, :, first - start:])
    vc.index_copy_(2, kept, vs[:, :, first - start:])
    return keys, values, masks[("ring", W)]


def ragged_ring_valid(slots: torch.Tensor, R: int) -> torch.Tensor:
    """Continuous batching (row b's newest token at its own slot ``slots[b]``, no padding):
    [B, R] True where the ring entry holds a slot of the row. Entry i holds the latest slot
    p <= slots[b] with p % R == i; it is valid once written (p >= 0), and with R == W every
    written entry is inside the window."""
    latest = slots[:, None] - (slots[:, None] - torch.arange(R, device=slots.device)[None]) % R
    return latest >= 0
