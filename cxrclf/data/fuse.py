"""Fuse sources into one manifest: decode once, deduplicate, group, split, write atomically.

Flow: source readers -> records -> parallel decode (PNG written, sha256 and pHash computed)
-> exact duplicates collapsed -> near-duplicates linked -> patient groups -> splits -> the
staged folder renamed into place.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from cxrclf import __version__, io
from cxrclf.data import imageio, split
from cxrclf.data.manifest import FUSED_COLUMNS, write_manifest
from cxrclf.data.sources import Exclusion, SourceRecord, SourceRows, cohen, nlm, rsna, table
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
    nlm: Path | None = None
    shenzhen: Path | None = None
    tables: tuple[Path, ...] = ()
    views: tuple[str, ...] = ("PA",)
    rsna_not_normal: str = "exclude"
    test_frac: float = 0.1
    val_frac: float = 0.1
    folds: int = 4
    seed: int = 0
    near_duplicate_bits: int = 24
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    def validate(self) -> None:
        if not any((self.cohen, self.rsna, self.nlm, self.shenzhen, self.tables)):
            raise CxrclfError("no source given: name at least one of the Cohen, RSNA, NLM or Shenzhen folders, or a table of your own")
        parse(RsnaNotNormal, self.rsna_not_normal, "the RSNA 'Not Normal' rule")
        if not (0 <= self.test_frac < 1 and 0 <= self.val_frac < 1 and self.test_frac + self.val_frac < 1):
            raise CxrclfError("the test and validation fractions must be in [0, 1) and sum to less than 1")
        if self.folds < 1:
            raise CxrclfError("folds must be at least 1")
        if not self.views:
            raise CxrclfError("views needs at least one view (for example PA)")


def read_sources(options: FuseOptions) -> SourceRows:
    """Every requested source's records and exclusions; raises before anything is written."""
    rows = SourceRows()
    if options.cohen:
        rows.extend(cohen.read(options.cohen, options.views))
    if options.rsna:
        rows.extend(rsna.read(options.rsna, options.views, options.rsna_not_normal))
    for folder in (options.nlm, options.shenzhen):
        if folder:
            rows.extend(nlm.read(folder, options.views))
    for csv_path in options.tables:
        rows.extend(table.read(csv_path, options.views))
    return rows


def _image_ids(records: list[SourceRecord]) -> list[str]:
    """Stable, file-name-safe, unique ids: ``<source>-<file stem>``."""
    ids, used = [], set()
    for record in records:
        stem = Path(record.source_file).stem
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{record.source.replace('table:', '')}-{stem}").strip("._")
        candidate, number = base, 1
        while candidate in used:  # "a-2" may also be a real file's stem: keep counting
            number += 1
            candidate = f"{base}-{number}"
        used.add(candidate)
        ids.append(candidate)
    return ids


def _decode_one(task: tuple[str, str]) -> tuple[int, int, str, str] | str:
    """Worker: decode, hash and write one image. Returns (width, height, sha256, phash) or a reason."""
    source_path, out_path = task
    try:
        image = imageio.read_image(source_path)
    except CxrclfError as exc:
        return exc.reason
    io.write_bytes(Path(out_path), imageio.encode_png(image))
    return image.shape[1], image.shape[0], imageio.pixel_sha256(image), imageio.perceptual_hash(image)


def _count_table(frame: pd.DataFrame, rows: str) -> dict[str, dict[str, int]]:
    table_counts: dict[str, dict[str, int]] = {}
    for key, sub in frame.groupby(rows, sort=True):
        counts = Counter(sub["finding"])
        table_counts[str(key)] = {f: int(counts.get(f, 0)) for f in FINDINGS} | {"total": int(len(sub))}
    return table_counts


def fuse(options: FuseOptions, out: Path, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Build ``out`` (manifest.csv, images/, fuse_report.json). Returns the report."""
    options.validate()
    inputs = [options.cohen, options.rsna, options.nlm, options.shenzhen, *options.tables]
    io.check_output_path(out, overwrite, inputs, kinds=("fused",))
    rows = read_sources(options)
    if not rows.records:
        raise CxrclfError("no usable images in the given sources (every row was excluded; see the reasons with --debug)")
    exclusions: list[Exclusion] = list(rows.exclusions)
    records = rows.records
    ids = _image_ids(records)

    with io.staged_folder(out, overwrite, kind="fused", inputs=inputs) as stage:
        (stage / IMAGES).mkdir()
        tasks = [(str(r.file), str(stage / IMAGES / f"{i}.png")) for r, i in zip(records, ids)]
        decoded = map_images(_decode_one, tasks, options.workers, progress)

        kept: list[dict] = []
        for record, image_id, result in zip(records, ids, decoded):
            if isinstance(result, str):
                exclusions.append(Exclusion(record.source, record.source_file, "unreadable image", result))
                continue
            width, height, sha, phash = result
            kept.append({
                "image_id": image_id, "path": f"{IMAGES}/{image_id}.png", "source": record.source,
                "source_file": record.source_file, "patient_id": record.patient_id, "finding": record.finding,
                "view": record.view, "sex": record.sex, "age": record.age, "width": width, "height": height,
                "sha256": sha, "phash": phash,
            })

        kept, duplicates, dropped = _collapse_exact_duplicates(kept)
        exclusions.extend(dropped)
        for row in (copy for group in duplicates for copy in group["dropped_rows"]):
            (stage / IMAGES / f"{row['image_id']}.png").unlink(missing_ok=True)
        if not kept:
            raise CxrclfError("no decodable images in the given sources")

        pairs = split.hamming_pairs([r["phash"] for r in kept], options.near_duplicate_bits)
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


def _collapse_exact_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict], list[Exclusion]]:
    """One row per identical pixel content. Conflicting findings exclude every copy."""
    by_sha: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_sha[row["sha256"]].append(row)
    kept, duplicates, dropped = [], [], []
    for row in rows:
        copies = by_sha[row["sha256"]]
        if len(copies) == 1:
            kept.append(row)
            continue
        if row is not copies[0]:
            continue
        findings = sorted({c["finding"] for c in copies})
        if len(findings) > 1:
            for copy in copies:
                dropped.append(Exclusion(copy["source"], copy["source_file"], "identical image, conflicting findings", ", ".join(findings)))
            duplicates.append({"kept": None, "dropped": [c["image_id"] for c in copies], "dropped_rows": copies, "all_rows": copies, "reason": "conflicting findings"})
            continue
        kept.append(copies[0])
        for copy in copies[1:]:
            dropped.append(Exclusion(copy["source"], copy["source_file"], "exact duplicate", f"same pixels as {copies[0]['source']}/{copies[0]['source_file']}"))
        duplicates.append({"kept": copies[0]["image_id"], "dropped": [c["image_id"] for c in copies[1:]], "dropped_rows": copies[1:], "all_rows": copies, "reason": "identical pixels"})
    return kept, duplicates, dropped


def _report(options: FuseOptions, frame: pd.DataFrame, exclusions: list[Exclusion], duplicates: list[dict], pairs, kept) -> dict:
    near = defaultdict(set)
    for i, j in pairs:
        if kept[i]["patient_id"] != kept[j]["patient_id"]:
            near[kept[i]["group"]].update((kept[i]["image_id"], kept[j]["image_id"]))
    excluded_by_reason = Counter(e.reason for e in exclusions)
    by_source_reason: dict[str, dict[str, int]] = defaultdict(dict)
    for (source, reason), n in sorted(Counter((e.source, e.reason) for e in exclusions).items()):
        by_source_reason[source][reason] = n
    single_source = {
        finding: sorted(set(frame.loc[frame["finding"] == finding, "source"]))[0]
        for finding in FINDINGS
        if frame["finding"].eq(finding).any() and frame.loc[frame["finding"] == finding, "source"].nunique() == 1
    }
    options_dict = {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "tables" else v) for k, v in asdict(options).items() if k != "workers"}
    return {
        "cxrclf_version": __version__,
        "options": options_dict,
        "images": int(len(frame)),
        "patients": int(frame["patient_id"].nunique()),
        "groups": int(frame["group"].nunique()),
        "source_x_finding": _count_table(frame, "source"),
        "split_x_finding": _count_table(frame, "split"),
        "fold_x_finding": _count_table(frame[frame["fold"] >= 0], "fold"),
        "excluded": {"total": len(exclusions), "by_reason": dict(sorted(excluded_by_reason.items())), "by_source": dict(by_source_reason)},
        "excluded_rows": [asdict(e) for e in exclusions],
        "exact_duplicates": [{k: v for k, v in d.items() if k not in ("dropped_rows", "all_rows")} for d in duplicates],
        "near_duplicates_across_patients": [sorted(ids) for _, ids in sorted(near.items())],
        "single_source_findings": single_source,
    }
