"""Fuse sources into one manifest: decode once, deduplicate, group, split, write atomically.

Flow: source readers -> records -> parallel decode (PNG written, sha256 and pHash computed)
-> copies collapsed (identical pixels, or one X-ray in two sources: NIH's images re-issued
by RSNA) -> near-duplicates linked -> patient groups -> splits -> the staged folder renamed
into place.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable

import pandas as pd

from cxrclf import __version__, io
from cxrclf.data import imageio, split
from cxrclf.data.confounding import confounding
from cxrclf.data.manifest import FUSED_COLUMNS, write_manifest
from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, cohen, nih, nlm, rsna, table
from cxrclf.choices import RsnaNotNormal, parse
from cxrclf.errors import CxrclfError
from cxrclf.parallel import map_images
from cxrclf.labels import FINDINGS

__all__ = ["FuseOptions", "IMAGES", "REPORT_NAME", "fuse", "read_sources"]

REPORT_NAME = "fuse_report.json"
IMAGES = "images"


@dataclass(frozen=True)
class FuseOptions:
    cohen: Path | None = None
    rsna: Path | None = None
    nih: Path | None = None
    nlm: Path | None = None
    shenzhen: Path | None = None
    tables: tuple[Path, ...] = ()
    views: tuple[str, ...] = ("PA",)
    rsna_not_normal: RsnaNotNormal = RsnaNotNormal.exclude
    test_frac: float = 0.1
    val_frac: float = 0.1
    folds: int = 4
    seed: int = 0
    near_duplicate_bits: int = 24
    same_xray_bits: int = 16  # copies in two sources: re-encoded, resized and brightened <= 14 bits, distinct X-rays >= 50 (docs/validity.md)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        """``rsna_not_normal`` as its :class:`~cxrclf.choices.RsnaNotNormal` member (callers may give the string); another
        value is kept for :meth:`validate` to refuse."""
        try:
            object.__setattr__(self, "rsna_not_normal", RsnaNotNormal(self.rsna_not_normal))
        except (TypeError, ValueError):
            pass

    def validate(self) -> None:
        if not any((self.cohen, self.rsna, self.nih, self.nlm, self.shenzhen, self.tables)):
            raise CxrclfError("no source given: name at least one of the Cohen, RSNA, NIH, NLM or Shenzhen folders, or a table of your own")
        parse(RsnaNotNormal, self.rsna_not_normal, "the RSNA 'Not Normal' rule")
        if not (0 <= self.test_frac < 1 and 0 <= self.val_frac < 1 and self.test_frac + self.val_frac < 1):
            raise CxrclfError("the test and validation fractions must be in [0, 1) and sum to less than 1")
        if self.folds < 1:
            raise CxrclfError("folds must be at least 1")
        if not self.views:
            raise CxrclfError("views needs at least one view (for example PA)")
        split.check_distance(self.near_duplicate_bits)
        split.check_distance(self.same_xray_bits)


def read_sources(options: FuseOptions) -> SourceRows:
    """Every requested source's records and exclusions; raises before anything is written."""
    rows = SourceRows()
    if options.cohen:
        rows.extend(cohen.read(options.cohen, options.views))
    if options.nih:  # before RSNA: of an X-ray in both, NIH's original PNG is the copy kept
        rows.extend(nih.read(options.nih, options.views))
    if options.rsna:
        rows.extend(rsna.read(options.rsna, options.views, options.rsna_not_normal))
    for folder in (options.nlm, options.shenzhen):
        if folder:
            rows.extend(nlm.read(folder, options.views))
    for csv_path in options.tables:
        rows.extend(table.read(csv_path, options.views))
    return rows


def _image_ids(records: list[SourceRecord]) -> list[str]:
    """Stable, file-name-safe, unique ids: ``<source>-<file stem>``; unique regardless of case too, since the images
    are written as ``<id>.png`` and a file system may not tell ``A.png`` from ``a.png``."""
    ids, used = [], set()
    for record in records:
        stem = Path(record.source_file).stem
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{record.source.replace('table:', '')}-{stem}").strip("._")
        candidate, number = base, 1
        while candidate.lower() in used:  # "a-2" may also be a real file's stem: keep counting
            number += 1
            candidate = f"{base}-{number}"
        used.add(candidate.lower())
        ids.append(candidate)
    return ids


@dataclass(frozen=True)
class DecodeTask:
    """What a worker is given: one source file and where its PNG copy goes."""

    source: str
    out: str


@dataclass(frozen=True)
class Decoded:
    """What a worker answers: the image's size and hashes, or why it could not be read."""

    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: str = ""
    reason: str | None = None


def _decode_one(task: DecodeTask) -> Decoded:
    """Worker: decode, hash and write one image."""
    try:
        image = imageio.read_image(task.source)
    except CxrclfError as exc:
        return Decoded(reason=exc.reason)
    io.write_new(Path(task.out), imageio.encode_png(image))  # into fuse's staged folder
    return Decoded(image.shape[1], image.shape[0], imageio.pixel_sha256(image), imageio.perceptual_hash(image))


def _decoded_rows(records: list[SourceRecord], ids: list[str], decoded: list[Decoded]) -> tuple[list[dict], list[Exclusion]]:
    """Manifest rows (without split columns) for the decoded images, and an exclusion for each image that failed."""
    kept: list[dict] = []
    unreadable: list[Exclusion] = []
    for record, image_id, result in zip(records, ids, decoded):
        if result.reason is not None:
            unreadable.append(Exclusion(record.source, record.source_file, "unreadable image", result.reason))
            continue
        width, height, sha, phash = result.width, result.height, result.sha256, result.phash
        kept.append({
            "image_id": image_id, "path": f"{IMAGES}/{image_id}.png", "source": record.source,
            "source_file": record.source_file, "patient_id": record.patient_id, "finding": record.finding,
            "view": record.view, "sex": record.sex, "age": record.age, "width": width, "height": height,
            "sha256": sha, "phash": phash,
        })
    return kept, unreadable


def _count_table(frame: pd.DataFrame, rows: str) -> dict[str, dict[str, int]]:
    table_counts: dict[str, dict[str, int]] = {}
    for key, sub in frame.groupby(rows, sort=True):
        counts = Counter(sub["finding"])
        table_counts[str(key)] = {f: int(counts.get(f, 0)) for f in FINDINGS} | {"total": int(len(sub))}
    return table_counts


def fuse(options: FuseOptions, out: Path, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Build ``out`` (manifest.csv, images/, fuse_report.json). Returns the report."""
    options.validate()
    inputs = [options.cohen, options.rsna, options.nih, options.nlm, options.shenzhen, *options.tables]
    io.check_output_path(out, overwrite, inputs, kinds=("fused",))
    rows = read_sources(options)
    if not rows.records:
        raise CxrclfError("no usable images in the given sources (every row was excluded; see the reasons with --debug)")
    exclusions: list[Exclusion] = list(rows.exclusions)
    records = rows.records
    ids = _image_ids(records)

    with io.staged_folder(out, overwrite, kind="fused", inputs=inputs) as stage:
        (stage / IMAGES).mkdir()
        tasks = [DecodeTask(str(r.file), str(stage / IMAGES / f"{i}.png")) for r, i in zip(records, ids)]
        decoded = map_images(_decode_one, tasks, options.workers, progress)
        kept, unreadable = _decoded_rows(records, ids, decoded)
        exclusions.extend(unreadable)
        # one search for both questions: the near-duplicate pairs of the rows that stay are those of all rows with both ends kept
        close = _close_pairs(kept, max(options.same_xray_bits, options.near_duplicate_bits))
        kept_indices, duplicates, dropped = _collapse_copies(kept, options.same_xray_bits, close)
        index_after = dict(zip(kept_indices, range(len(kept_indices))))
        kept = [kept[i] for i in kept_indices]
        exclusions.extend(dropped)
        for row in (copy for group in duplicates for copy in group["dropped_rows"]):
            (stage / IMAGES / f"{row['image_id']}.png").unlink(missing_ok=True)
        if not kept:
            raise CxrclfError("no decodable images in the given sources")

        pairs = [(index_after[i], index_after[j]) for i, j, bits in close
                 if bits <= options.near_duplicate_bits and i in index_after and j in index_after]
        patients = [r["patient_id"] for r in kept]
        # the same pixels under several patients: those patients are linked even though only one copy stays
        shared = [tuple(sorted({c["patient_id"] for c in group["all_rows"]})) for group in duplicates]
        groups = split.leakage_groups(patients, pairs, [p for p in shared if len(p) > 1])
        splits, folds = split.assign_splits(groups, [r["finding"] for r in kept], options.test_frac, options.val_frac, options.folds, options.seed)
        for row, group, split_name, fold in zip(kept, groups, splits, folds):
            row.update(group=group, split=split_name, fold=fold)

        frame = pd.DataFrame(kept, columns=list(FUSED_COLUMNS)).sort_values("image_id", kind="stable").reset_index(drop=True)
        write_manifest(frame, stage)
        report = _report(options, frame, exclusions, duplicates, pairs, kept) | {"lung_masks": rows.lung_masks}
        io.write_json(stage / REPORT_NAME, report)
    return report


def _close_pairs(rows: list[dict], max_bits: int) -> list[tuple[int, int, int]]:
    """``(i, j, bits)`` for every pair of rows (``i < j``, sorted) whose perceptual hashes are at most ``max_bits`` apart."""
    found = split.hamming_pairs([r["phash"] for r in rows], max_bits)
    return [(i, j, (int(rows[i]["phash"], 16) ^ int(rows[j]["phash"], 16)).bit_count()) for i, j in found]


def _copy_sets(rows: list[dict], same_xray_bits: int, close: list[tuple[int, int, int]]) -> list[list[int]]:
    """Row indices holding one X-ray (sets of two or more, in row order): identical pixels, or,
    from two sources, perceptual hashes at most ``same_xray_bits`` apart (a re-encoded copy,
    as RSNA's DICOMs of NIH's PNGs: their pixels differ, so only the hash finds them).
    ``close``: :func:`_close_pairs` of ``rows`` at ``same_xray_bits`` or more."""
    links = [(i, j) for i, j, bits in close if bits <= same_xray_bits and rows[i]["source"] != rows[j]["source"]]
    first_with_sha: dict[str, int] = {}
    for index, row in enumerate(rows):
        first = first_with_sha.setdefault(row["sha256"], index)
        if first != index:
            links.append((first, index))
    # connected components: every row its own "patient", joined by the links
    members: dict[str, list[int]] = defaultdict(list)
    for index, component in enumerate(split.leakage_groups([str(i) for i in range(len(rows))], links)):
        members[component].append(index)
    return [indices for indices in members.values() if len(indices) > 1]


def _collapse_copies(rows: list[dict], same_xray_bits: int, close: list[tuple[int, int, int]]) -> tuple[list[int], list[dict], list[Exclusion]]:
    """One row per X-ray: the first copy in reading order stays. Conflicting findings exclude every copy.
    Returns the indices of the rows that stay (in order), the copy sets and the exclusions."""
    dropped_index: set[int] = set()
    duplicates, dropped = [], []
    for indices in _copy_sets(rows, same_xray_bits, close):
        copies = [rows[i] for i in indices]
        identical = len({c["sha256"] for c in copies}) == 1
        findings = sorted({c["finding"] for c in copies})
        dropped_index.update(indices if len(findings) > 1 else indices[1:])
        entry = {"all_rows": copies, "identical": identical}
        if len(findings) > 1:
            reason = "identical image, conflicting findings" if identical else "same X-ray in several sources, conflicting findings"
            detail = ", ".join(findings) if identical else "; ".join(f"{c['source']}/{c['source_file']}: {c['finding']}" for c in copies)
            dropped.extend(Exclusion(c["source"], c["source_file"], reason, detail) for c in copies)
            duplicates.append(entry | {"kept": None, "dropped": [c["image_id"] for c in copies], "dropped_rows": copies, "reason": "conflicting findings"})
            continue
        first = copies[0]
        for copy in copies[1:]:
            if copy["sha256"] == first["sha256"]:
                dropped.append(Exclusion(copy["source"], copy["source_file"], "exact duplicate", f"same pixels as {first['source']}/{first['source_file']}"))
            else:
                bits = (int(copy["phash"], 16) ^ int(first["phash"], 16)).bit_count()
                dropped.append(Exclusion(copy["source"], copy["source_file"], "same X-ray in another source",
                                         f"kept as {first['source']}/{first['source_file']} (perceptual hashes {bits} bits apart)"))
        duplicates.append(entry | {"kept": first["image_id"], "dropped": [c["image_id"] for c in copies[1:]], "dropped_rows": copies[1:],
                                   "reason": "identical pixels" if identical else "same X-ray"})
    return [index for index in range(len(rows)) if index not in dropped_index], duplicates, dropped


def _across_sources(duplicates: list[dict]) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """The copy sets that span sources, with every copy's provenance, and their counts per source pair."""
    listed, per_pair = [], defaultdict(Counter)
    for entry in duplicates:
        sources = sorted({c["source"] for c in entry["all_rows"]})
        if len(sources) < 2:
            continue
        listed.append({
            "kept": entry["kept"], "reason": entry["reason"],
            "copies": [{k: c[k] for k in ("image_id", "source", "source_file", "patient_id", "finding")} for c in entry["all_rows"]],
        })
        outcome = "kept once" if entry["kept"] else "excluded, findings disagree"
        for a, b in combinations(sources, 2):
            per_pair[f"{a}+{b}"].update({"x_rays": 1, outcome: 1})
    return listed, {pair: {"x_rays": c["x_rays"], "kept once": c["kept once"], "excluded, findings disagree": c["excluded, findings disagree"]}
                    for pair, c in sorted(per_pair.items())}


def _report(options: FuseOptions, frame: pd.DataFrame, exclusions: list[Exclusion], duplicates: list[dict], pairs, kept) -> dict:
    near = defaultdict(set)
    for i, j in pairs:
        if kept[i]["patient_id"] != kept[j]["patient_id"]:
            near[kept[i]["group"]].update((kept[i]["image_id"], kept[j]["image_id"]))
    excluded_by_reason = Counter(e.reason for e in exclusions)
    across, per_pair = _across_sources(duplicates)
    by_source_reason: dict[str, dict[str, int]] = defaultdict(dict)
    for (source, reason), n in sorted(Counter((e.source, e.reason) for e in exclusions).items()):
        by_source_reason[source][reason] = n
    confounded = confounding(frame["finding"], frame["source"])
    options_dict = {k: (str(v) if isinstance(v, (Path, RsnaNotNormal)) else [str(p) for p in v] if k == "tables" else v) for k, v in asdict(options).items() if k != "workers"}
    return {
        "cxrclf_version": __version__,
        "options": options_dict,
        "images": int(len(frame)),
        "patients": int(frame["patient_id"].nunique()),
        "groups": int(frame["group"].nunique()),
        "source_x_finding": _count_table(frame, "source"),
        "view_x_finding": _count_table(frame, "view"),  # the views kept (a run records those of its training rows)
        "split_x_finding": _count_table(frame, "split"),
        "fold_x_finding": _count_table(frame[frame["fold"] >= 0], "fold"),
        "excluded": {"total": len(exclusions), "by_reason": dict(sorted(excluded_by_reason.items())), "by_source": dict(by_source_reason)},
        "excluded_rows": [asdict(e) for e in exclusions],
        "exact_duplicates": [{k: d[k] for k in ("kept", "dropped", "reason")} for d in duplicates if d["identical"]],
        "same_xray_across_sources": across,
        "same_xray_by_source_pair": per_pair,
        "near_duplicates_across_patients": [sorted(ids) for _, ids in sorted(near.items())],
        "single_source_findings": confounded.single_source,  # also in confounding: kept for readers of earlier reports
        "confounding": confounded.to_dict(),
    }
