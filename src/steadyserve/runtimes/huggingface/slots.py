"""Pre-allocated KV cache slots for the continuous batcher: rows join and leave copying nothing.

The cache of every attention layer is one buffer of ``[max_num_seqs, heads, width, head_dim]``.
A *slot* (a row of the buffers) belongs to one running sequence from its join to its leave:

* a **join** writes the freshly prefilled keys/values of the new rows into free slots (the
  prefill's own output; the running rows are not touched, nothing is re-padded);
* a **leave** (finished or aborted) only marks the slot free; its stale contents stay masked
  until the next sequence that takes the slot overwrites them;
* a **decoding step** writes one column, ``col``, for every slot in use and reads the window
  ``[lo, col]`` where ``lo`` is the first column any running row uses.

As in :mod:`.kvcache`, the tokens of every row are right-aligned at the shared write column (left
padding): T5's relative position bias only depends on column differences, and decoder-only
models get each row's own ``position_ids``. The model sees the window as an ordinary cache of
``col - lo`` columns (``get_seq_length`` / ``get_mask_sizes``), so no attention code changes.

Rows fed to the model are the prefix ``[0, hi)`` of the slots (``hi`` = one past the highest slot
in use; joins take the lowest free slots, so holes fill first). A hole runs as a masked dummy row
and its logits are never read.

The width grows geometrically (``grow``: one copy, amortised) and is compacted when the write
column reaches the end (``compact``: everything left of ``lo`` is dropped, one copy, at most once
per ``width - max_span`` steps); neither happens on a join or a leave in the steady state.

**Static shapes** (``static``, for ``--compile``: CUDA graphs replay fixed shapes, and a compiled
graph is specialised on them). The same buffers, seen differently: the model is fed a *bucket* of
rows (the next power of two above ``hi``, capped at the slot count) and the *whole* width of the
buffers, columns left of a row's start and right of ``col`` masked; the write column is a 0-d
tensor (``col_t``, updated in place), so a step's shapes change only when the bucket or the
width does (a handful of times in a server's life). The two views share the layout, so a batch
can switch from static to windowed at any step (a compile failure does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, EncoderDecoderCache

from steadyserve.runtimes.huggingface.kvcache import Batch, Seq, _layers

#: first width of the buffers (columns); they double up to ``2 * max_model_len``
INITIAL_WIDTH = 128


def buckets(slots: int) -> list[int]:
    """Every row bucket of a static-shape step: 1, 2, 4, ... and ``slots``."""
    out = [1]
    while out[-1] < slots:
        out.append(min(2 * out[-1], slots))
    return out


def static_shapes(slots: int, max_model_len: int) -> int:
    """How many distinct shapes a static step can take: row buckets x buffer widths (the
    widths double from ``INITIAL_WIDTH`` up to ``2 * max_model_len + 1``)."""
    max_width = 2 * max_model_len + 1
    widths = max(1, math.ceil(math.log2(max(2, max_width) / INITIAL_WIDTH))) + 1
    return len(buckets(slots)) * widths


def bucket(rows: int, slots: int) -> int:
    """Rows fed to a static-shape step: the next power of two, at most ``slots``."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, slots)


class SlotLayer(CacheLayerMixin):
    """One attention layer's slot buffers; reads and writes the window its owner says."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SlotBatch, cross: bool = False) -> None:
        super().__init__()
        self.owner = owner
        self.cross = cross
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("slot buffers are allocated on the first join")

    def allocate(self, like: torch.Tensor, slots: int, width: int) -> None:
        heads, dim = like.shape[1], like.shape[3]
        shape = (slots, heads, width, dim)
        self.kbuf = like.new_zeros(shape)
        self.vbuf = like.new_zeros(shape)
        self.is_initialized = True
        self.pin()

    def pin(self) -> None:
        """Static shapes on CUDA: the buffers are mutated inside the graph, which CUDA graphs
        allow only for tensors at a fixed address (as transformers' ``StaticLayer`` does)."""
        if self.owner.static and self.kbuf is not None and self.kbuf.device.type == "cuda":
            torch._dynamo.mark_static_address(self.kbuf)
            torch._dynamo.mark_static_address(self.vbuf)

    def resize(self, width: int, shift: int = 0) -> None:
        """New width; columns ``[shift, ...)`` move to column 0."""
        assert self.kbuf is not None and self.vbuf is not None
        old = self.kbuf.shape[2]
        keep = min(old - shift, width)
        for name in ("kbuf", "vbuf"):
            buf = getattr(self, name)
            if width == old:
                buf[:, :, :keep] = buf[:, :, shift : shift + keep].clone()
            else:
                new = buf.new_zeros((*buf.shape[:2], width, buf.shape[3]))
                new[:, :, :keep] = buf[:, :, shift : shift + keep]
                setattr(self, name, new)
        self.pin()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cross:  # the cross-attention cache is filled at the join, never updated
            raise AssertionError("cross-attention slots are read-only during decoding")
        assert self.kbuf is not None and self.vbuf is not None
        o = self.owner
        if key_states.shape[2] != 1:
            raise AssertionError("slot layers take one new token per row")
        if o.static:  # the write column is a tensor: no Python int in the traced graph
            keys, values = self.kbuf[: o.fed], self.vbuf[: o.fed]
            keys.index_copy_(2, o.col_t.view(1), key_states)
            values.index_copy_(2, o.col_t.view(1), value_states)
            return keys, values
        self.kbuf[: o.hi, :, o.col] = key_states[:, :, 0]
        self.vbuf[: o.hi, :, o.col] = value_states[:, :, 0]
        return self.kbuf[: o.hi, :, o.lo : o.col + 1], self.vbuf[: o.hi, :, o.lo : o.col + 1]

    def bind(self) -> None:
        """Point ``keys``/``values`` at the current window (what the model reads as the cache)."""
        assert self.kbuf is not None and self.vbuf is not None
        o = self.owner
        if o.static:
            self.keys, self.values = self.kbuf[: o.fed], self.vbuf[: o.fed]
        elif self.cross:
            self.keys = self.kbuf[: o.hi, :, : o.enc_hi]
            self.values = self.vbuf[: o.hi, :, : o.enc_hi]
        else:
            self.keys = self.kbuf[: o.hi, :, o.lo : o.col]
            self.values = self.vbuf[: o.hi, :, o.lo : o.col]

    def get_seq_length(self) -> Any:
        o = self.owner
        if o.static and self.kbuf is not None:  # the query's column (a tensor) / the encoder's
            return int(self.kbuf.shape[2]) if self.cross else o.col_t
        return o.enc_hi if self.cross else o.col - o.lo

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.owner.static and self.kbuf is not None:  # every column (masked if not a row's)
            return int(self.kbuf.shape[2]), 0
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1


class SlotBatch:
    """The running sequences in their cache slots (see the module docstring)."""

    def __init__(
        self,
        *,
        slots: int,
        max_model_len: int,
        encoder_decoder: bool,
        device: torch.device,
        static: bool = False,
    ) -> None:
        self.slots = slots
        #: feed the model fixed shapes (see the module docstring)
        self.static = static
        #: rows fed to the last step (``hi``, or its bucket when static)
        self.fed = 0
        #: ``col`` as a 0-d tensor, updated in place (static steps read it)
        self.col_t = torch.zeros((), dtype=torch.long, device=device)
        self.max_width = 2 * max_model_len + 1
        self.max_enc_width = max_model_len
        self.encoder_decoder = encoder_decoder
        self.device = device
        self.seqs: list[Seq | None] = [None] * slots
        #: first real column of each slot (meaningful for slots in use)
        self.start = [0] * slots
        self.enc_len = [0] * slots
        self.width = 0
        self.col = 0
        self.lo = 0
        self.hi = 0
        self.enc_hi = 0
        #: the layers are made at the first join (as many as the model's cache has)
        self.own: list[SlotLayer] = []
        self.cross: list[SlotLayer] = []
        self.mask = torch.zeros((slots, 0), dtype=torch.long, device=device)
        self.last = torch.zeros(slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.enc_mask = torch.ones((slots, 1), dtype=torch.long, device=device)
        self.cache: Cache | None = None

    # ---- bookkeeping -------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return sum(1 for s in self.seqs if s is not None)

    @property
    def columns(self) -> int:
        return self.col - self.lo if self.rows else 0

    def active(self) -> list[int]:
        return [i for i, s in enumerate(self.seqs) if s is not None]

    def free_slots(self) -> int:
        return self.slots - self.rows

    def row_of(self, request_id: str) -> int | None:
        for i, seq in enumerate(self.seqs):
            if seq is not None and seq.request_id == request_id:
                return i
        return None

    def leave(self, slots: set[int]) -> None:
        """Free ``slots`` (nothing is copied; the contents stay masked until reused)."""
        for i in slots:
            self.seqs[i] = None
        self._refresh()

    def _refresh(self) -> None:
        active = self.active()
        self.hi = active[-1] + 1 if active else 0
        self.lo = min((self.start[i] for i in active), default=self.col)
        self.enc_hi = max((self.enc_len[i] for i in active), default=0)

    # ---- decoding ----------------------------------------------------------------------------
    def prepare_decode(self) -> dict[str, Any]:
        """Model inputs for one decoding step of rows ``[0, hi)`` (writes go to column ``col``);
        static: of the bucket of rows over every column (see the module docstring)."""
        if self.col >= self.width:
            self._make_room(1)
        n = bucket(self.hi, self.slots) if self.static else self.hi
        self.fed = n
        self.mask[:n, self.col] = 1  # (a free row attends to its own column: never NaN)
        if self.static:
            self.col_t.fill_(self.col)
            mask = self.mask[:n]
            enc_mask = self.enc_mask[:n]
        else:
            mask = self.mask[:n, self.lo : self.col + 1]
            enc_mask = self.enc_mask[:n, : self.enc_hi]
        for layer in self.own + self.cross:
            layer.bind()
        ids = self.last[:n].unsqueeze(1)
        if self.encoder_decoder:
            return {
                "decoder_input_ids": ids,
                "decoder_attention_mask": mask,
                "attention_mask": enc_mask,
                "past_key_values": self.cache,
                "use_cache": True,
            }
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": self.positions[:n].unsqueeze(1),
            "past_key_values": self.cache,
            "use_cache": True,
        }

    def advance(self, max_position: int) -> None:
        """After a decoding step: the written column becomes part of every row."""
        self.col += 1
        if not self.encoder_decoder:
            self.positions[: self.hi] += 1
            # holes keep counting; keep them inside the position table
            self.positions.clamp_(max=max_position)

    # ---- joining -----------------------------------------------------------------------------
    def join(self, batch: Batch) -> list[int]:
        """Move the rows of a freshly prefilled ``batch`` into free slots; returns the slots."""
        own, cross = _layers(batch.cache)
        n, width = batch.rows, batch.columns
        free = [i for i, s in enumerate(self.seqs) if s is None][:n]
        assert len(free) == n, "join without enough free slots"
        if self.width == 0:
            self._allocate(own, cross, batch)
        if self.rows == 0 and width < self.width:  # nothing to keep: start the window afresh
            self.col = width
        if width > self.col:
            self._make_room(width - self.col, right=True)
        if self.col + 1 > self.width:
            self._make_room(1)
        idx = torch.tensor(free, dtype=torch.long, device=self.device)
        left = self.col - width
        if self.static:  # the static view reads every column: no stale NaN/inf under a mask
            for layer in self.own + self.cross:
                assert layer.kbuf is not None and layer.vbuf is not None
                layer.kbuf.index_fill_(0, idx, 0)
                layer.vbuf.index_fill_(0, idx, 0)
        for mine, theirs in zip(self.own, own, strict=True):
            assert mine.kbuf is not None and mine.vbuf is not None
            mine.kbuf[idx, :, left : self.col] = theirs.keys  # type: ignore[assignment]
            mine.vbuf[idx, :, left : self.col] = theirs.values  # type: ignore[assignment]
        self.mask[idx] = 0
        self.mask[idx, left : self.col] = batch.mask
        self.last[idx] = batch.last
        if batch.positions is not None:
            self.positions[idx] = batch.positions
        firsts = batch.mask.argmax(dim=1).tolist()  # first real column of each new row
        if batch.enc_mask is not None:
            enc_width = int(batch.enc_mask.shape[1])
            if enc_width > self.enc_mask.shape[1]:
                self._grow_encoder(min(2 * enc_width, self.max_enc_width))
            for mine, theirs in zip(self.cross, cross, strict=True):
                assert mine.kbuf is not None and mine.vbuf is not None
                mine.kbuf[idx, :, :enc_width] = theirs.keys  # type: ignore[assignment]
                mine.vbuf[idx, :, :enc_width] = theirs.values  # type: ignore[assignment]
            self.enc_mask[idx] = 0
            self.enc_mask[idx, :enc_width] = batch.enc_mask
            lens = batch.enc_mask.sum(dim=1).tolist()
        else:
            lens = [0] * n
        for j, slot in enumerate(free):
            self.seqs[slot] = batch.seqs[j]
            self.start[slot] = left + int(firsts[j])
            self.enc_len[slot] = int(lens[j])
        self._refresh()
        return free

    def _allocate(self, own: list[Any], cross: list[Any], batch: Batch) -> None:
        self.width = min(max(INITIAL_WIDTH, 2 * batch.columns + 1), self.max_width)
        self.own = [SlotLayer(self) for _ in own]
        self.cross = [SlotLayer(self, cross=True) for _ in cross]
        if self.encoder_decoder:
            cache = EncoderDecoderCache(
                Cache(layers=list(self.own)), Cache(layers=list(self.cross))
            )
            cache.is_updated = dict.fromkeys(range(len(self.cross)), True)
            self.cache = cache
        else:
            self.cache = Cache(layers=list(self.own))
        for layer, ref in zip(self.own, own, strict=True):
            layer.allocate(ref.keys, self.slots, self.width)
        self.mask = torch.zeros((self.slots, self.width), dtype=torch.long, device=self.device)
        if batch.enc_mask is not None:
            enc_width = min(
                max(INITIAL_WIDTH, 2 * int(batch.enc_mask.shape[1])), self.max_enc_width
            )
            for layer, ref in zip(self.cross, cross, strict=True):
                layer.allocate(ref.keys, self.slots, enc_width)
            self.enc_mask = torch.ones(
                (self.slots, enc_width), dtype=torch.long, device=self.device
            )

    def _grow_encoder(self, enc_width: int) -> None:
        for layer in self.cross:
            layer.resize(enc_width)
        grown = self.enc_mask.new_zeros((self.slots, enc_width))
        grown[:, : self.enc_mask.shape[1]] = self.enc_mask
        self.enc_mask = grown

    def _make_room(self, need: int, right: bool = False) -> None:
        """Make ``need`` more columns: to the right of ``col`` (drop the columns left of ``lo``,
        grow if that is not enough), or with ``right`` to the left of ``col`` (shift the
        window right)."""
        active = self.active()
        lo = min((self.start[i] for i in active), default=self.col)
        span = self.col - lo
        if right:
            target = need + self.col  # the window ends at target; it starts at target - span
            width = self.width
            while target + 1 > width:
                width = min(2 * width, self.max_width)
            shift = lo - (target - span)  # negative: content moves right
            self._rebuild(width, shift)
            return
        width = self.width
        while span + need > width // 2 and width < self.max_width:
            width = min(2 * width, self.max_width)
        self._rebuild(width, lo)

    def _rebuild(self, width: int, shift: int) -> None:
        """Resize to ``width`` columns, column ``c`` moving to ``c - shift``."""
        if shift >= 0:
            for layer in self.own:
                layer.resize(width, shift)
            mask = self.mask.new_zeros((self.slots, width))
            keep = min(self.width - shift, width)
            mask[:, :keep] = self.mask[:, shift : shift + keep]
        else:
            move = -shift
            for layer in self.own:
                assert layer.kbuf is not None and layer.vbuf is not None
                for name in ("kbuf", "vbuf"):
                    buf = getattr(layer, name)
                    new = buf.new_zeros((*buf.shape[:2], width, buf.shape[3]))
                    new[:, :, move : move + self.col] = buf[:, :, : self.col]
                    setattr(layer, name, new)
                layer.pin()
            mask = self.mask.new_zeros((self.slots, width))
            mask[:, move : move + self.col] = self.mask[:, : self.col]
        self.mask = mask
        self.width = width
        self.col -= shift
        self.start = [s - shift for s in self.start]
        self._refresh()
