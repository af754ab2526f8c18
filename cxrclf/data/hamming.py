"""Exact Hamming-radius search over 256-bit hashes in near-linear time (multi-index hashing).

Brute force compares every hash with every other: n^2/2 distances, hours at a million hashes.
Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with
multi-index hashing", CVPR 2012) cuts each hash into ``m`` chunks. If two hashes differ in
at most ``d`` bits, by the pigeonhole principle at least one chunk differs in at most
``d // m`` bits; so each chunk is indexed (a bucket per chunk value), every hash looks up
the buckets within radius ``d // m`` of its own chunk (flipping those bits), and every
candidate pair is verified with the full popcount. The answer is exactly brute force's:
the chunks only decide which pairs are worth verifying.

Chunks of about log2(n) bits keep a bucket near one hash for random hashes. Real X-ray
hashes have correlated bits (neighbouring DCT frequencies), which would pile hashes into
few buckets of a chunk made of neighbouring bits; the bit positions are therefore
shuffled (with a fixed seed, so runs take the same time) before they are cut into chunks.
And where some bits are nearly constant across the hashes (images that resemble each other:
synthetic phantoms unposed, under their own exposure only, carry 147 bits of entropy of 256,
real radiographs' about 240), a chunk made of them would pile most hashes into a few
buckets; so the bits are dealt to the chunks by their entropy on these hashes
(:func:`bit_order`), each chunk getting an equal share. On 55,000 such phantom hashes that
halved the search's time (docs/performance.md).

:func:`pairs` picks the chunk count, or brute force, from a cost model measured on this
project's machines (docs/performance.md, "Scale"); the two engines are public so that
tests can hold one against the other.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

__all__ = ["BITS", "bit_order", "brute_force_pairs", "hash_words", "multi_index_pairs", "pairs", "plan"]

BITS = 256
WORDS = BITS // 64
MAX_CHUNK_BITS = 24          # a bucket table of 2^24 int64 offsets is 128 MiB; larger chunks need another index
PERMUTATION_SEED = 20120616  # any fixed value: the answer never depends on it, the time does
CANDIDATES_PER_BATCH = 1 << 21  # pairs expanded and verified at once: bounds memory at ~100 MiB

# Seconds per unit of work, measured with benchmarks/scale.py on this project's 2-core
# machine under load (docs/performance.md, "Scale"): a brute-force distance, a bucket
# lookup, an expanded candidate pair, indexing one hash in one chunk, an entry of a chunk's
# bucket table, one numpy round per chunk and flip mask. Only their ratios matter: they
# choose the chunk count.
_BRUTE_SECONDS = 9e-8
_LOOKUP_SECONDS = 2e-7
_CANDIDATE_SECONDS = 1e-7
_INDEX_SECONDS = 3e-7
_TABLE_SECONDS = 1.2e-8
_ROUND_SECONDS = 1e-4


def hash_words(hashes: list[str]) -> np.ndarray:
    """``(n, 4)`` native ``uint64``: the 64-hex-digit hashes, most significant word first."""
    words = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=">u8")
    return words.astype(np.uint64).reshape(len(hashes), WORDS)


def _distances(words: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    distance = np.zeros(len(rows), dtype=np.uint16)
    for word in range(WORDS):
        distance += np.bitwise_count(words[rows, word] ^ words[cols, word])
    return distance


def brute_force_pairs(words: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair ``(i < j)`` within ``max_distance`` bits, by comparing all of them: ``(k, 2)`` int64, sorted.

    The oracle for :func:`multi_index_pairs`, and the faster engine for small inputs.
    """
    n = len(words)
    found = []
    block = 512
    for start in range(0, n, block):
        chunk = words[start:start + block]
        distances = np.zeros((len(chunk), n), dtype=np.uint16)
        for word in range(WORDS):
            distances += np.bitwise_count(chunk[:, word, None] ^ words[None, :, word])
        rows, cols = np.nonzero(distances <= max_distance)
        rows = rows + start
        upper = rows < cols
        found.append(np.stack([rows[upper], cols[upper]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.empty((0, 2), dtype=np.int64)


def _chunk_bounds(chunks: int) -> list[tuple[int, int]]:
    """``chunks`` contiguous ranges of the permuted bits, their lengths differing by at most one."""
    edges = [round(k * BITS / chunks) for k in range(chunks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` bits set, 0 first."""
    masks = [0]
    for count in range(1, min(radius, bits) + 1):
        masks.extend(sum(1 << b for b in chosen) for chosen in combinations(range(bits), count))
    return np.array(masks, dtype=np.int64)


def _unpacked(words: np.ndarray) -> np.ndarray:
    """``(n, 256)`` uint8: the hashes' bits, most significant first."""
    return np.unpackbits(words.astype(">u8").view(np.uint8).reshape(-1, BITS // 8), axis=1)


def bit_order(words: np.ndarray, chunks: int, sample: int = 1 << 16) -> np.ndarray:
    """The 256 bit positions in chunk order: chunk k is the ``k``-th range of :func:`_chunk_bounds`.

    Bits are dealt by their entropy on (at most ``sample`` evenly spaced of) these hashes,
    highest first, each to the chunk with the least entropy so far that has room; bits of
    equal entropy come in the order of a fixed shuffle, so neighbouring, correlated bits
    still part. Every chunk then separates the hashes about as well as another, however
    uneven the bits are; for random hashes it is a shuffle like any other.
    """
    shuffled = np.random.default_rng(PERMUTATION_SEED).permutation(BITS)
    step = max(1, len(words) // sample)
    ones = _unpacked(words[::step]).mean(axis=0) if len(words) else np.full(BITS, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.nan_to_num(-(ones * np.log2(ones) + (1 - ones) * np.log2(1 - ones)))
    entropy = np.round(entropy, 6)  # ties broken by the shuffle, not by float noise
    room = [high - low for low, high in _chunk_bounds(chunks)]
    totals, groups = np.zeros(chunks), [[] for _ in range(chunks)]
    for bit in shuffled[np.argsort(-entropy[shuffled], kind="stable")]:
        open_chunks = [k for k in range(chunks) if len(groups[k]) < room[k]]
        k = min(open_chunks, key=lambda c: (totals[c], c))
        groups[k].append(int(bit))
        totals[k] += entropy[bit]
    return np.array([bit for group in groups for bit in group], dtype=np.int64)


def _chunk_values(words: np.ndarray, chunks: int) -> np.ndarray:
    """``(chunks, n)`` int64: each hash's value in each chunk of the bit positions :func:`bit_order` deals."""
    order = bit_order(words, chunks)
    bounds = _chunk_bounds(chunks)
    values = np.empty((chunks, len(words)), dtype=np.int64)
    rows_per_step = 1 << 16  # the unpacked bits of 65,536 hashes: 16 MiB
    big_endian = words.astype(">u8")
    for start in range(0, len(words), rows_per_step):
        bits = _unpacked(big_endian[start:start + rows_per_step])[:, order].astype(np.int64)
        for index, (low, high) in enumerate(bounds):
            weights = np.left_shift(np.int64(1), np.arange(high - low, dtype=np.int64))
            values[index, start:start + len(bits)] = bits[:, low:high] @ weights
    return values


def multi_index_pairs(words: np.ndarray, max_distance: int, chunks: int) -> np.ndarray:
    """Every pair ``(i < j)`` within ``max_distance`` bits, by multi-index hashing with ``chunks`` chunks.

    ``(k, 2)`` int64, sorted: the same array :func:`brute_force_pairs` returns, for any
    ``chunks`` from ``ceil(256 / 24)`` to 256 (the chunk count changes only the time).
    """
    n = len(words)
    bounds = _chunk_bounds(chunks)
    if max(high - low for low, high in bounds) > MAX_CHUNK_BITS:
        raise ValueError(f"chunks of at most {MAX_CHUNK_BITS} bits: at least {math.ceil(BITS / MAX_CHUNK_BITS)} chunks, not {chunks}")
    radius = max_distance // chunks
    values = _chunk_values(words, chunks)
    found: list[np.ndarray] = []
    pending = 0
    for index, (low, high) in enumerate(bounds):
        chunk = values[index]
        sorted_hashes = np.argsort(chunk, kind="stable")
        offsets = np.zeros((1 << (high - low)) + 1, dtype=np.int64)
        np.cumsum(np.bincount(chunk, minlength=1 << (high - low)), out=offsets[1:])
        for mask in _flip_masks(high - low, radius):
            # a pair in buckets v and v ^ mask is found from either side: look up from the side without the mask's top bit
            queries = np.arange(n) if mask == 0 else np.flatnonzero((chunk & (1 << (int(mask).bit_length() - 1))) == 0)
            wanted = chunk[queries] ^ mask
            starts = offsets[wanted]
            counts = offsets[wanted + 1] - starts
            hit = np.flatnonzero(counts)
            for key in _verified(words, max_distance, sorted_hashes, queries[hit], starts[hit], counts[hit], same_bucket=mask == 0):
                found.append(key)
                pending += len(key)
            if pending > 4 * CANDIDATES_PER_BATCH:  # the same pair is found in several chunks: compact
                found, pending = [np.unique(np.concatenate(found))], 0
    keys = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return np.stack([keys // n, keys % n], axis=1)


def _verified(words: np.ndarray, max_distance: int, sorted_hashes: np.ndarray, queries: np.ndarray, starts: np.ndarray, counts: np.ndarray, same_bucket: bool):
    """Keys ``i * n + j`` (``i < j``) of the pairs (query, member of its bucket) within the distance, in batches.

    In its own bucket a query meets every pair twice and itself once: only ``query < member`` is verified.
    """
    n = len(words)
    ends = np.cumsum(counts)
    first = 0
    while first < len(queries):
        done = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done + CANDIDATES_PER_BATCH, side="right")))
        batch = counts[first:last]
        total = int(ends[last - 1] - done)
        rows = np.repeat(queries[first:last], batch)
        within = np.arange(total, dtype=np.int64) - np.repeat(ends[first:last] - batch - done, batch)
        cols = sorted_hashes[np.repeat(starts[first:last], batch) + within]
        if same_bucket:
            upper = rows < cols
            rows, cols = rows[upper], cols[upper]
        else:
            rows, cols = np.minimum(rows, cols), np.maximum(rows, cols)
        close = _distances(words, rows, cols) <= max_distance
        yield rows[close] * n + cols[close]
        first = last


def plan(n: int, max_distance: int) -> int:
    """The chunk count expected to be fastest for ``n`` random hashes, or 0 for brute force.

    Cost model, per chunk of ``b`` bits searched with ``k`` flip masks: index every hash
    in a table of ``2^b`` buckets;
    look up ``n`` hashes for the empty mask and ``n / 2`` for each other one (a pair is
    looked up from one side); expand ``n / 2^b`` bucket members per lookup, for random hashes.
    """
    best_chunks, best_cost = 0, _BRUTE_SECONDS * n * n / 2
    for chunks in range(math.ceil(BITS / MAX_CHUNK_BITS), BITS + 1):
        bits = BITS // chunks
        masks = sum(math.comb(bits, k) for k in range(min(max_distance // chunks, bits) + 1))
        lookups = n * (1 + (masks - 1) / 2)
        cost = chunks * (_INDEX_SECONDS * n + _TABLE_SECONDS * 2**bits + masks * _ROUND_SECONDS + lookups * (_LOOKUP_SECONDS + _CANDIDATE_SECONDS * n / 2**bits))
        if cost < best_cost:
            best_chunks, best_cost = chunks, cost
    return best_chunks


def pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs ``(i < j)``, sorted, whose hex hashes differ in at most ``max_distance`` bits."""
    if len(hashes) < 2:
        return []
    words = hash_words(hashes)
    chunks = plan(len(words), max_distance)
    found = multi_index_pairs(words, max_distance, chunks) if chunks else brute_force_pairs(words, max_distance)
    return list(map(tuple, found.tolist()))
