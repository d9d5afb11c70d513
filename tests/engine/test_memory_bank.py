"""Memory bank: exact kNN, provenance, atomic safetensors persistence, incremental growth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import engine.memory_bank as memory_bank
from engine.coreset import GreedyCoresetSampler
from engine.memory_bank import (
    BankIntegrityError,
    IncrementalMemoryBank,
    MemoryBank,
    read_metadata,
)


def _bank(n: int = 1000, d: int = 24, seed: int = 0) -> MemoryBank:
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(n)
    provenance = torch.stack([rows // 100, (rows // 10) % 10, rows % 10], dim=1)
    return MemoryBank(torch.randn(n, d, generator=g), provenance)


# ---- construction ------------------------------------------------------------------------------
def test_shapes_are_validated_with_the_shapes_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"\[N, D\].*\(5,\)"):
        MemoryBank(torch.zeros(5), torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"N = 5.*\(5, 8\).*\(4, 3\)"):
        MemoryBank(torch.zeros(5, 8), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        MemoryBank(torch.zeros(5, 8), torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="floating"):
        MemoryBank(torch.zeros(5, 8, dtype=torch.long), torch.zeros(5, 3, dtype=torch.long))


def test_dtypes_are_normalised() -> None:
    bank = MemoryBank(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.int32))
    assert bank.vectors.dtype == torch.float32 and bank.provenance.dtype == torch.int64
    assert len(bank) == 3 and bank.dim == 4 and len(MemoryBank.empty(7, device="cpu")) == 0


# ---- kNN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "chunk_size", "bank_chunk_size"),
    [(1, None, None), (1, 7, 333), (4, None, None), (4, 64, 3), (5, 1, 1000), (9, 50, 128)],
)
def test_knn_equals_brute_force(
    k: int, chunk_size: int | None, bank_chunk_size: int | None
) -> None:
    bank = _bank()
    queries = torch.randn(301, bank.dim, generator=torch.Generator().manual_seed(9))
    result = bank.knn(queries, k=k, chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
    expected = torch.cdist(queries.double(), bank.vectors.double()).topk(k, dim=1, largest=False)
    assert result.distances.shape == result.indices.shape == (301, k)
    assert torch.equal(result.indices, expected.indices)
    torch.testing.assert_close(result.distances.double(), expected.values, rtol=1e-5, atol=1e-5)


def test_knn_of_bank_rows_is_exactly_zero() -> None:
    bank = _bank()
    result = bank.knn(bank.vectors[10:20])
    assert torch.equal(result.indices[:, 0], torch.arange(10, 20))
    assert torch.all(result.distances == 0)


def test_knn_rejects_bad_inputs() -> None:
    bank = _bank(n=10, d=6)
    with pytest.raises(ValueError, match=r"\[M, 6\].*\(10, 6\).*\(3, 5\)"):
        bank.knn(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\]"):
        bank.knn(torch.zeros(3, 6), k=11)


# ---- subsample / concat ------------------------------------------------------------------------
def test_provenance_follows_subsample_and_concat() -> None:
    bank = _bank()
    picked = bank.subsample(torch.tensor([512, 7, 999]))
    assert torch.equal(picked.vectors, bank.vectors[[512, 7, 999]])
    assert picked.provenance.tolist() == [[5, 1, 2], [0, 0, 7], [9, 9, 9]]
    both = picked.concat(bank.subsample([3]))
    assert len(both) == 4 and both.provenance[-1].tolist() == [0, 0, 3]
    with pytest.raises(IndexError, match=r"\[0, 1000\)"):
        bank.subsample([1000])
    with pytest.raises(ValueError, match="dim 24 and 5"):
        bank.concat(_bank(n=3, d=5))


def test_sampler_indices_keep_provenance() -> None:
    bank = _bank()
    idx = GreedyCoresetSampler(size=50).run(bank.vectors)
    small = bank.subsample(idx)
    assert torch.equal(small.provenance, bank.provenance[idx])


# ---- persistence -------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    bank = _bank()
    path = tmp_path / "bank.safetensors"
    digest = bank.save(path, metadata={"version": "3", "backbone": "efficientnet_lite0"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = MemoryBank.load(path, expected_sha256=digest, device="cpu")
    assert torch.equal(loaded.vectors, bank.vectors)
    assert torch.equal(loaded.provenance, bank.provenance)
    meta = read_metadata(path)
    assert meta["version"] == "3" and meta["backbone"] == "efficientnet_lite0"
    assert meta["format"] == memory_bank.FORMAT
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]


def test_tampered_file_raises_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    digest = _bank().save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(BankIntegrityError) as info:
        MemoryBank.load(path, expected_sha256=digest)
    message = str(info.value)
    assert str(path) in message and digest in message and actual in message


def test_missing_or_garbled_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        MemoryBank.load(missing)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_metadata(missing)
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(BankIntegrityError, match="garbled.safetensors"):
        MemoryBank.load(garbled)
    with pytest.raises(BankIntegrityError, match="garbled.safetensors"):
        read_metadata(garbled)


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="version"):
        _bank().save(tmp_path / "b.safetensors", metadata={"version": 3})  # type: ignore[dict-item]


def test_interrupted_write_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bank.safetensors"
    old_digest = _bank(seed=1).save(path)
    old_bytes = path.read_bytes()

    def crash_midway(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a bank")
        raise OSError("disk full")

    monkeypatch.setattr(memory_bank, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        _bank(seed=2).save(path)
    assert path.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]  # no temp file left
    assert torch.equal(MemoryBank.load(path, old_digest).vectors, _bank(seed=1).vectors)


# ---- incremental -------------------------------------------------------------------------------
def _coreset_bank() -> MemoryBank:
    full = _bank(n=600, d=16)
    return full.subsample(GreedyCoresetSampler(size=120).run(full.vectors))


def _provenance(n: int, image: int = 77) -> torch.Tensor:
    return torch.stack(
        [torch.full((n,), image), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1
    )


def test_incremental_adds_novel_skips_known_and_leaves_old_bank_alone() -> None:
    bank = _coreset_bank()
    before_vectors, before_prov = bank.vectors.clone(), bank.provenance.clone()
    inc = IncrementalMemoryBank(bank, max_size=1000)
    novel = torch.randn(3, bank.dim, generator=torch.Generator().manual_seed(5)) + 50.0
    novel[1] += 30.0
    novel[2] -= 30.0
    new = torch.cat([bank.vectors[:20], novel, novel[:1].repeat(4, 1)])  # known, novel, dup-novel
    result = inc.update(new, _provenance(len(new)))
    assert (result.added, result.skipped, result.recoreset) == (3, 24, False)
    assert result.bank is not bank and inc.bank is result.bank
    assert len(result.bank) == len(bank) + 3
    assert {tuple(v) for v in result.bank.vectors[-3:].tolist()} == {
        tuple(v) for v in novel.tolist()
    }
    assert result.bank.provenance[-3:, 0].tolist() == [77, 77, 77]
    assert result.threshold > 0
    assert torch.equal(bank.vectors, before_vectors) and torch.equal(bank.provenance, before_prov)
    assert len(bank) == 120


def test_incremental_without_novelty_returns_the_same_bank() -> None:
    bank = _coreset_bank()
    result = IncrementalMemoryBank(bank, max_size=1000).update(
        bank.vectors[:10] + 1e-4, _provenance(10)
    )
    assert (result.added, result.skipped, result.recoreset) == (0, 10, False)
    assert result.bank is bank


def test_incremental_recoresets_above_max_size_and_caps_additions() -> None:
    bank = _coreset_bank()
    novel = torch.randn(10, bank.dim, generator=torch.Generator().manual_seed(6)) * 40 + 100
    capped = IncrementalMemoryBank(bank, max_size=1000, max_add=4).update(novel, _provenance(10))
    assert (capped.added, capped.skipped) == (4, 6)
    result = IncrementalMemoryBank(bank, max_size=125).update(novel, _provenance(10))
    assert result.added == 10 and result.recoreset
    assert len(result.bank) == 125 and len(bank) == 120
    assert result.bank.provenance.shape == (125, 3)


def test_incremental_validates_inputs() -> None:
    inc = IncrementalMemoryBank(_coreset_bank(), max_size=200)
    with pytest.raises(ValueError, match="bank dim 16"):
        inc.update(torch.zeros(2, 5), _provenance(2))
    with pytest.raises(ValueError, match="new_vectors / new_provenance"):
        inc.update(torch.zeros(2, 16), _provenance(3))
    with pytest.raises(ValueError, match="max_size"):
        IncrementalMemoryBank(_coreset_bank(), max_size=0)


def test_incremental_starts_from_an_empty_bank() -> None:
    inc = IncrementalMemoryBank(MemoryBank.empty(4, device="cpu"), max_size=10)
    points = torch.tensor([[0.0, 0, 0, 0], [0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    result = inc.update(points, _provenance(3))
    assert (result.added, result.skipped) == (2, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_cuda_matches_cpu() -> None:
    bank = _bank()
    queries = torch.randn(100, bank.dim)
    cpu = bank.knn(queries, k=3)
    gpu = bank.to("cuda").knn(queries, k=3)
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    torch.testing.assert_close(gpu.distances.cpu(), cpu.distances, rtol=1e-4, atol=1e-4)
