"""Multi-index hashing returns exactly brute force's pairs (and brute force agrees with Python's popcount)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrclf.data import hamming
from cxrclf.data.split import hamming_pairs


def _hex(bits: np.ndarray) -> list[str]:
    return [row.tobytes().hex() for row in np.packbits(bits.astype(np.uint8), axis=1)]


def _python_pairs(hashes: list[str], max_distance: int) -> np.ndarray:
    values = [int(h, 16) for h in hashes]
    found = [(i, j) for i in range(len(values)) for j in range(i + 1, len(values)) if (values[i] ^ values[j]).bit_count() <= max_distance]
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def _planted(n: int, distance: int, seed: int) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int]]]:
    """Random hashes with copies exactly ``distance`` and ``distance + 1`` bits from their originals."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, 256), dtype=np.uint8)
    inside, outside = [], []
    for k in range(10):
        original, copy = 2 * k, n - 1 - 2 * k
        for flips, where in ((distance, inside), (distance + 1, outside)):
            bits[copy] = bits[original]
            bits[copy, rng.choice(256, size=flips, replace=False)] ^= 1
            where.append((original, copy))
            original, copy = original + 1, copy - 1
    return _hex(bits), inside, outside


def _clustered(clusters: int, per_cluster: int, flips: int, seed: int) -> list[str]:
    """Cluster centres, each with ``per_cluster`` members a few flipped bits away, shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, size=(clusters, 256), dtype=np.uint8)
    bits = np.repeat(centres, per_cluster, axis=0)
    for row in bits:
        row[rng.choice(256, size=int(rng.integers(0, flips + 1)), replace=False)] ^= 1
    return _hex(bits[rng.permutation(len(bits))])


@pytest.mark.parametrize("distance", [0, 1, 24, 64])
def test_planted_pairs_at_the_distance_are_found_and_one_bit_more_are_not(distance):
    hashes, inside, outside = _planted(400, distance, seed=distance)
    words = hamming.hash_words(hashes)
    oracle = _python_pairs(hashes, distance)
    found = {tuple(p) for p in oracle.tolist()}
    assert set(inside) <= found and not set(outside) & found
    assert np.array_equal(hamming.brute_force_pairs(words, distance), oracle)
    for chunks in (13, 16, 32, 64, 256):
        if distance // chunks <= 2:  # 64 bits in 13 chunks would flip 4 of 20 bits: 6,000 masks
            assert np.array_equal(hamming.multi_index_pairs(words, distance, chunks), oracle), chunks
    assert hamming_pairs(hashes, distance) == [tuple(p) for p in oracle.tolist()]


@pytest.mark.parametrize("distance", [0, 1, 24, 64])
def test_clustered_hashes_match_brute_force(distance):
    hashes = _clustered(clusters=40, per_cluster=12, flips=16, seed=1)
    words = hamming.hash_words(hashes)
    oracle = hamming.brute_force_pairs(words, distance)
    if distance >= 24:
        assert len(oracle) >= 40 * 12 * 11 / 2 * 0.9  # most members of a cluster are within 24 bits of each other
    for chunks in (13, 25, 64):
        if distance // chunks <= 2:
            assert np.array_equal(hamming.multi_index_pairs(words, distance, chunks), oracle), chunks


def test_random_hashes_at_many_distances_and_the_chosen_engine():
    rng = np.random.default_rng(7)
    hashes = _hex(rng.integers(0, 2, size=(3000, 256), dtype=np.uint8))
    words = hamming.hash_words(hashes)
    assert hamming.plan(3000, 24) > 0  # large enough that the default distance uses the index, not brute force
    for distance in (0, 1, 24, 96, 104):  # random 256-bit hashes are about 128 bits apart: the last two find pairs
        oracle = hamming.brute_force_pairs(words, distance)
        assert hamming_pairs(hashes, distance) == [tuple(p) for p in oracle.tolist()]
    assert len(hamming.brute_force_pairs(words, 104)) > 0


def test_chunks_too_wide_for_a_bucket_table_are_refused():
    words = hamming.hash_words(["0" * 64, "f" * 64])
    with pytest.raises(ValueError, match="at least 11 chunks"):
        hamming.multi_index_pairs(words, 0, 10)


def test_plan_prefers_brute_force_for_few_hashes_and_large_distances():
    assert hamming.plan(50, 24) == 0
    assert hamming.plan(1_000_000, 24) >= 11
    assert hamming.plan(2_000, 200) == 0


def test_uneven_bits_are_dealt_evenly_to_the_chunks_and_the_answer_stays_brute_forces():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2, size=(600, 256), dtype=np.uint8)
    bits[:, :120] = 0                    # 120 bits that never change, as alike images leave some of a hash's bits
    bits[:, 120:140] = bits[:, 140:160]  # and 20 that repeat others
    bits[:, :120][rng.random((600, 120)) < 0.02] ^= 1  # ... almost
    words = hamming.hash_words(_hex(bits))
    for chunks in (13, 25):
        order = hamming.bit_order(words, chunks)
        assert sorted(order.tolist()) == list(range(256))
        ones = np.unpackbits(words.astype(">u8").view(np.uint8).reshape(-1, 32), axis=1).mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = np.nan_to_num(-(ones * np.log2(ones) + (1 - ones) * np.log2(1 - ones)))
        shares = [entropy[order[low:high]].sum() for low, high in hamming._chunk_bounds(chunks)]
        assert max(shares) - min(shares) <= 1.0, shares  # each chunk about the same entropy (a random shuffle: several bits apart)
        assert np.array_equal(hamming.multi_index_pairs(words, 24, chunks), hamming.brute_force_pairs(words, 24))
    assert np.array_equal(hamming.bit_order(words, 13), hamming.bit_order(words, 13))  # the same hashes, the same order
