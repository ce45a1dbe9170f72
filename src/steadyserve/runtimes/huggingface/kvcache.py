"""The running batch of the continuous batcher: a padded KV cache that rows join and leave.

Rows are sequences; columns are cache positions. Every row's tokens are right-aligned (left
padding), so the newest token of every row sits in the last column and one decoding step appends
one column for all rows. An attention mask (1 = real, 0 = padding) says which columns each row
may attend to; decoder-only models also get explicit ``position_ids`` (the row's own count of real
tokens), so GPT-2's absolute positions and Llama's RoPE see each sequence as if it ran alone.
T5's relative position bias only depends on column differences, which left padding preserves.

Encoder-decoder rows also carry their cross-attention cache (keys/values of the encoder output)
and the encoder attention mask, right-padded to the longest encoder input in the batch.

* :meth:`Batch.select` keeps some rows (finished or aborted rows are dropped at once, which frees
  their cache memory) and trims columns that are padding in every row;
* :meth:`Batch.merge` appends freshly prefilled rows, padding whichever side is shorter.

Only ``transformers``' ``DynamicLayer`` (plain, growing) cache layers are supported; sliding-
window or static layers are refused when a batch is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache

from steadyserve.errors import ModelError
from steadyserve.runtimes.huggingface.sampling import SeqState


@dataclass
class Seq(SeqState):
    """One sequence of the engine (its id, and whether its first delta went out)."""

    request_id: str = ""
    started: bool = False


def _layers(cache: Cache) -> tuple[list[DynamicLayer], list[DynamicLayer]]:
    """(self-attention layers, cross-attention layers) of a cache; checks their kind."""
    if isinstance(cache, EncoderDecoderCache):
        own = list(cache.self_attention_cache.layers)
        cross = list(cache.cross_attention_cache.layers)
    else:
        own, cross = list(cache.layers), []
    for layer in own + cross:
        if type(layer) is not DynamicLayer:
            raise ModelError(
                f"continuous batching supports plain dynamic KV caches only, not {type(layer).__name__}"
            )
    return own, cross  # type: ignore[return-value]


def _pad_seq(x: torch.Tensor, left: int, right: int, dim: int) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` (counted from the end: -1 or -2)."""
    if left == 0 and right == 0:
        return x
    spec = (left, right) if dim == -1 else (0, 0, left, right)
    return F.pad(x, spec)


@dataclass
class Batch:
    """The running sequences and their batched decoding state (all tensors on one device)."""

    seqs: list[Seq]
    cache: Cache
    #: ``[rows, cols]`` decoder self-attention mask (1 = real token)
    mask: torch.Tensor
    #: ``[rows]`` token each row feeds at the next step
    last: torch.Tensor
    #: ``[rows]`` position id of that token (decoder-only models)
    positions: torch.Tensor | None = None
    #: ``[rows, enc_cols]`` encoder attention mask (encoder-decoder models)
    enc_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _layers(self.cache)

    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    # ---- shrinking ---------------------------------------------------------------------------
    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order), then trim all-padding columns."""
        if keep == list(range(self.rows)):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        own, cross = _layers(self.cache)
        start = _first_real(self.mask.index_select(0, idx))
        stop = _last_real(self.enc_mask.index_select(0, idx)) if self.enc_mask is not None else 0
        for layer in own:
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]  # type: ignore[union-attr]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]  # type: ignore[union-attr]
        for layer in cross:
            layer.keys = layer.keys.index_select(0, idx)[:, :, :stop]  # type: ignore[union-attr]
            layer.values = layer.values.index_select(0, idx)[:, :, :stop]  # type: ignore[union-attr]
        self.seqs = [self.seqs[i] for i in keep]
        self.mask = self.mask.index_select(0, idx)[:, start:]
        self.last = self.last.index_select(0, idx)
        if self.positions is not None:
            self.positions = self.positions.index_select(0, idx)
        if self.enc_mask is not None:
            self.enc_mask = self.enc_mask.index_select(0, idx)[:, :stop]

    # ---- growing -----------------------------------------------------------------------------
    def merge(self, other: Batch) -> None:
        """Append the rows of ``other`` (freshly prefilled) to this batch."""
        own_a, cross_a = _layers(self.cache)
        own_b, cross_b = _layers(other.cache)
        cols = max(self.columns, other.columns)
        pa, pb = cols - self.columns, cols - other.columns
        for la, lb in zip(own_a, own_b, strict=True):
            la.keys = torch.cat([_pad_seq(la.keys, pa, 0, -2), _pad_seq(lb.keys, pb, 0, -2)])  # type: ignore[arg-type]
            la.values = torch.cat(  # type: ignore[arg-type]
                [_pad_seq(la.values, pa, 0, -2), _pad_seq(lb.values, pb, 0, -2)]  # type: ignore[arg-type]
            )
        self.mask = torch.cat([_pad_seq(self.mask, pa, 0, -1), _pad_seq(other.mask, pb, 0, -1)])
        if self.enc_mask is not None and other.enc_mask is not None:
            ecols = max(self.enc_mask.shape[1], other.enc_mask.shape[1])
            ea, eb = ecols - self.enc_mask.shape[1], ecols - other.enc_mask.shape[1]
            for la, lb in zip(cross_a, cross_b, strict=True):
                la.keys = torch.cat([_pad_seq(la.keys, 0, ea, -2), _pad_seq(lb.keys, 0, eb, -2)])  # type: ignore[arg-type]
                la.values = torch.cat(  # type: ignore[arg-type]
                    [_pad_seq(la.values, 0, ea, -2), _pad_seq(lb.values, 0, eb, -2)]  # type: ignore[arg-type]
                )
            self.enc_mask = torch.cat(
                [_pad_seq(self.enc_mask, 0, ea, -1), _pad_seq(other.enc_mask, 0, eb, -1)]
            )
        self.last = torch.cat([self.last, other.last])
        if self.positions is not None and other.positions is not None:
            self.positions = torch.cat([self.positions, other.positions])
        self.seqs.extend(other.seqs)


def _first_real(mask: torch.Tensor) -> int:
    """Index of the first column that is a real token in some row (0 if none is)."""
    cols = mask.any(dim=0).nonzero()
    return int(cols[0, 0]) if cols.numel() else 0


def _last_real(mask: torch.Tensor) -> int:
    """One past the last column that is a real token in some row."""
    cols = mask.any(dim=0).nonzero()
    return int(cols[-1, 0]) + 1 if cols.numel() else int(mask.shape[1])


def new_cache(model_config: object, encoder_decoder: bool) -> Cache:
    """An empty cache of the kind the batch keeps (dynamic; self + cross for encoder-decoder)."""
    if encoder_decoder:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
    return DynamicCache()
