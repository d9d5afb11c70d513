"""PatchCore memory bank: normal patch features with provenance, exact kNN, safe persistence.

Provenance ``(image id, row, col)`` travels with every vector through subsampling and merging, so
the explanation layer can crop the nearest normal patch from its training image. A bank is treated
as immutable: every operation returns a new bank, so an old version stays usable for rollback.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from engine.artifacts import atomic_write
from engine.coreset import CoresetSampler, GreedyCoresetSampler, resolve_device

__all__ = [
    "BankIntegrityError",
    "IncrementalMemoryBank",
    "KnnResult",
    "MemoryBank",
    "UpdateResult",
    "atomic_write",
    "read_metadata",
]

#: Written into every bank file's metadata so a reader can tell what it is looking at.
FORMAT = "kensa.memory_bank/1"
#: kNN blocking: bank rows per step, and the byte budget of one [queries x rows] float32 block.
#: Few big blocks measured best on the shared 2-core CPU (each op pays an OpenMP barrier, costly
#: when the cores are contended; cache-sized 4 MB blocks only won single-threaded, by <20%) and
#: amortise kernel launches on CUDA.
KNN_BANK_ROWS = 65536
KNN_BLOCK_BYTES = 256 * 2**20


class BankIntegrityError(ValueError):
    """A bank file does not match its recorded sha256, or is not a readable bank at all."""


class KnnResult(NamedTuple):
    """``distances[i, j]`` is the Euclidean distance from query i to bank row ``indices[i, j]``,
    ascending in j."""

    distances: Tensor
    indices: Tensor


class UpdateResult(NamedTuple):
    """Outcome of one incremental update; ``bank`` is a new object unless nothing was added.

    ``added`` counts new vectors appended before any re-coreset (which may drop some of them);
    ``skipped`` the rest; ``threshold`` the novelty distance that was applied.
    """

    bank: MemoryBank
    added: int
    skipped: int
    recoreset: bool
    threshold: float


@dataclass(frozen=True, eq=False)
class MemoryBank:
    """``vectors`` [N, D] float32 (on any device) and ``provenance`` [N, 3] int64 (always CPU).

    Tensors are not copied on construction; treat them as read-only once they are in a bank.
    """

    vectors: Tensor
    provenance: Tensor

    def __post_init__(self) -> None:
        vectors, provenance = self.vectors, self.provenance
        if not isinstance(vectors, Tensor) or not isinstance(provenance, Tensor):
            raise TypeError(
                f"vectors and provenance must be tensors, got {type(vectors).__name__} "
                f"and {type(provenance).__name__}"
            )
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be [N, D], got shape {tuple(vectors.shape)}")
        if provenance.ndim != 2 or provenance.shape != (vectors.shape[0], 3):
            raise ValueError(
                f"provenance must be [N, 3] (image id, row, col) with N = {vectors.shape[0]} "
                f"as in vectors {tuple(vectors.shape)}, got shape {tuple(provenance.shape)}"
            )
        if not vectors.is_floating_point():
            raise TypeError(f"vectors must be floating point, got {vectors.dtype}")
        if provenance.is_floating_point() or provenance.is_complex():
            raise TypeError(f"provenance must be integer, got {provenance.dtype}")
        object.__setattr__(self, "vectors", vectors.detach().to(torch.float32).contiguous())
        object.__setattr__(self, "provenance", provenance.detach().to("cpu", torch.int64))

    # ---- basic shape / device ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __repr__(self) -> str:
        return f"MemoryBank(n={len(self)}, dim={self.dim}, device={self.device})"

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def device(self) -> torch.device:
        return self.vectors.device

    @cached_property
    def _sq_norms(self) -> Tensor:
        """||b||² per row, computed once per bank (banks are immutable)."""
        return self.vectors.square().sum(1)

    @classmethod
    def empty(cls, dim: int, device: str | torch.device | None = None) -> MemoryBank:
        """A bank with no rows, e.g. as the starting point of an incremental bank."""
        return cls(
            torch.empty(0, dim, device=resolve_device(device)), torch.empty(0, 3, dtype=torch.long)
        )

    def to(self, device: str | torch.device | None) -> MemoryBank:
        """The same bank with its vectors on ``device`` (``None``: CUDA when present else CPU)."""
        target = resolve_device(device)
        if target == self.device:
            return self
        return MemoryBank(self.vectors.to(target), self.provenance)

    # ---- new banks from old ones ---------------------------------------------------------------
    def subsample(self, indices: Tensor | Sequence[int]) -> MemoryBank:
        """Rows ``indices`` (in that order) with their provenance, as a new bank."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(
                f"indices must lie in [0, {len(self)}), got range "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        return MemoryBank(
            self.vectors.index_select(0, idx.to(self.device)), self.provenance.index_select(0, idx)
        )

    def concat(self, other: MemoryBank) -> MemoryBank:
        """This bank's rows followed by ``other``'s (moved to this bank's device)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot concat banks of dim {self.dim} and {other.dim}")
        return MemoryBank(
            torch.cat([self.vectors, other.vectors.to(self.device)]),
            torch.cat([self.provenance, other.provenance]),
        )

    # ---- scoring hot path ----------------------------------------------------------------------
    def knn(
        self,
        queries: Tensor,
        k: int = 1,
        chunk_size: int | None = None,
        bank_chunk_size: int | None = None,
    ) -> KnnResult:
        """Exact k nearest bank rows of each query, on the bank's device.

        Candidates come from ||q||² - 2 q·b + ||b||², one matmul per block (sizes from
        ``KNN_BANK_ROWS`` / ``KNN_BLOCK_BYTES``); the k winners' distances are then recomputed
        directly as ||q - b||, so duplicates give exactly 0 and what is returned carries no
        cancellation error. ``chunk_size`` (queries per step) and ``bank_chunk_size`` (bank rows
        per step) override the automatic blocking.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must be [M, {self.dim}] to match the bank {tuple(self.vectors.shape)}, "
                f"got shape {tuple(queries.shape)}"
            )
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (bank size), got {k}")
        queries = queries.detach().to(self.device, torch.float32)
        bank_step = min(len(self), bank_chunk_size or KNN_BANK_ROWS)
        per_query = 4 * max(bank_step, k * self.dim)  # distance block vs. exact re-check
        query_step = chunk_size or max(1, KNN_BLOCK_BYTES // per_query)
        distances, indices = [], []
        for s in range(0, queries.shape[0], query_step):
            block = queries[s : s + query_step]
            best_sq, best_idx = self._block_knn(block, k, bank_step)
            exact = (block.unsqueeze(1) - self.vectors[best_idx]).norm(dim=2)
            exact, order = exact.sort(dim=1, stable=True)
            distances.append(exact)
            indices.append(best_idx.gather(1, order))
        if not distances:  # zero queries
            empty = torch.empty(0, k, device=self.device)
            return KnnResult(empty, empty.long())
        return KnnResult(torch.cat(distances), torch.cat(indices))

    def _block_knn(self, block: Tensor, k: int, bank_step: int) -> tuple[Tensor, Tensor]:
        """Top-k by squared-distance-minus-||q||² over the bank, merged across bank chunks."""
        best_sq: Tensor | None = None
        best_idx: Tensor | None = None
        for b in range(0, len(self), bank_step):
            sq = torch.addmm(
                self._sq_norms[b : b + bank_step],
                block,
                self.vectors[b : b + bank_step].T,
                alpha=-2.0,
            )
            kk = min(k, sq.shape[1])
            if kk == 1:
                val, idx = sq.min(1, keepdim=True)
            else:
                val, idx = sq.topk(kk, dim=1, largest=False)
            idx += b
            if best_sq is None:
                best_sq, best_idx = val, idx
            else:
                val, idx = torch.cat([best_sq, val], 1), torch.cat([best_idx, idx], 1)
                best_sq, pick = val.topk(min(k, val.shape[1]), dim=1, largest=False)
                best_idx = idx.gather(1, pick)
        assert best_sq is not None and best_idx is not None
        return best_sq, best_idx

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> str:
        """Write the bank atomically as safetensors; returns the file's sha256 hex digest.

        ``metadata`` (str -> str, e.g. bank version, backbone, layers) is stored in the header;
        the key ``format`` is reserved and always set to ``FORMAT``.
        """
        meta = dict(metadata or {})
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
        meta["format"] = FORMAT
        tensors = {
            "vectors": self.vectors.detach().cpu().contiguous(),
            "provenance": self.provenance.contiguous(),
        }
        return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_sha256: str | None = None,
        device: str | torch.device | None = None,
    ) -> MemoryBank:
        """Read a bank written by ``save``; verifies the sha256 first when one is given."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"memory bank file not found: {path}") from None
        actual = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and actual != expected_sha256.strip().lower():
            raise BankIntegrityError(
                f"memory bank {path} failed its integrity check: expected sha256 "
                f"{expected_sha256}, actual {actual}"
            )
        return cls.from_bytes(data, path).to(device)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | os.PathLike[str] = "<bytes>") -> MemoryBank:
        """A bank from the bytes of a bank file already read (and verified) by the caller;
        ``path`` only names it in errors."""
        try:
            tensors = safetensors.torch.load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise BankIntegrityError(
                f"memory bank {path} is not a readable safetensors file: {exc}"
            ) from exc
        missing = {"vectors", "provenance"} - tensors.keys()
        if missing:
            raise BankIntegrityError(f"memory bank {path} lacks tensors {sorted(missing)}")
        try:
            bank = cls(tensors["vectors"], tensors["provenance"])
        except (TypeError, ValueError) as exc:
            raise BankIntegrityError(f"memory bank {path} is malformed: {exc}") from exc
        return bank


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a bank file, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"memory bank file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise BankIntegrityError(
            f"memory bank {path} is not a readable safetensors file: {exc}"
        ) from exc




class IncrementalMemoryBank:
    """Grows a bank with new normal patches, keeping only the novel ones, capped at ``max_size``.

    Novelty threshold: the ``novelty_quantile`` of the bank's own nearest-neighbour distances
    (estimated from up to ``threshold_sample`` rows). For a greedy-coreset bank these distances are
    all >= its covering radius, so a new vector that the bank already covers is skipped.
    New vectors are then taken farthest-first (greedy k-center continued from the bank) while their
    distance to the bank *and* to the vectors already taken exceeds the threshold, at most
    ``max_add`` per update: the most novel first, and a batch of near-duplicates adds one vector.
    Above ``max_size`` the merged bank is re-coreset with ``sampler(size=max_size)``.
    Every update returns a new ``MemoryBank``; the previous one is never modified.
    """

    def __init__(
        self,
        bank: MemoryBank,
        max_size: int,
        novelty_quantile: float = 0.5,
        max_add: int | None = None,
        sampler: Callable[..., CoresetSampler] = GreedyCoresetSampler,
        threshold_sample: int = 2048,
        seed: int = 0,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if not 0.0 <= novelty_quantile <= 1.0:
            raise ValueError(f"novelty_quantile must be in [0, 1], got {novelty_quantile}")
        if max_add is not None and max_add < 0:
            raise ValueError(f"max_add must be >= 0 or None, got {max_add}")
        self.bank = bank
        self.max_size = max_size
        self.novelty_quantile = novelty_quantile
        self.max_add = max_add
        self.sampler = sampler
        self.threshold_sample = threshold_sample
        self.seed = seed
        self._threshold_for: tuple[MemoryBank, float] | None = None

    def novelty_threshold(self) -> float:
        """Distance above which a new vector counts as novel for the current bank (cached)."""
        if self._threshold_for is not None and self._threshold_for[0] is self.bank:
            return self._threshold_for[1]
        bank = self.bank
        if len(bank) < 2:
            value = 0.0
        else:
            generator = torch.Generator().manual_seed(self.seed)
            rows = torch.randperm(len(bank), generator=generator)[: self.threshold_sample]
            nn = bank.knn(bank.vectors[rows.to(bank.device)], k=2).distances[:, 1]
            value = float(torch.quantile(nn.double().cpu(), self.novelty_quantile))
        self._threshold_for = (bank, value)
        return value

    def update(self, new_vectors: Tensor, new_provenance: Tensor) -> UpdateResult:
        """Add the novel rows of ``new_vectors`` [K, D] (provenance [K, 3]); see the class doc."""
        try:
            incoming = MemoryBank(new_vectors, new_provenance)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"new_vectors / new_provenance: {exc}") from exc
        bank = self.bank
        if incoming.dim != bank.dim:
            raise ValueError(
                f"new_vectors {tuple(new_vectors.shape)} do not match the bank dim {bank.dim}"
            )
        threshold = self.novelty_threshold()
        limit = incoming.vectors.shape[0] if self.max_add is None else self.max_add
        candidates = incoming.vectors.to(bank.device)
        if len(bank) and len(candidates):
            distance = bank.knn(candidates, k=1).distances[:, 0].clone()
        else:
            distance = torch.full((len(candidates),), float("inf"), device=bank.device)
        taken: list[int] = []
        while len(taken) < limit and len(candidates):
            best, best_row = distance.max(0)
            if not float(best) > threshold:
                break
            row = int(best_row)
            taken.append(row)
            to_new = torch.cdist(
                candidates, candidates[row : row + 1], compute_mode="donot_use_mm_for_euclid_dist"
            )[:, 0]
            torch.minimum(distance, to_new, out=distance)
            distance[row] = float("-inf")
        skipped = len(candidates) - len(taken)
        if not taken:
            return UpdateResult(bank, 0, skipped, False, threshold)
        merged = bank.concat(incoming.subsample(taken))
        recoreset = len(merged) > self.max_size
        if recoreset:
            merged = merged.subsample(self.sampler(size=self.max_size).run(merged.vectors))
        self.bank = merged
        return UpdateResult(merged, len(taken), skipped, recoreset, threshold)
