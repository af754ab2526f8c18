"""The class x source table: how far each finding is tied to the archive it comes from.

Where every image of a finding comes from one source, the finding and the source cannot
be told apart in the data: a network can learn the archive (its resolution, compression,
contrast, burned-in text) instead of the disease, and its scores on that class measure
the archive as much as the patient. ``fuse`` prints and records this table from the start,
and ``audit`` repeats it for any fused or preprocessed manifest; both call
:func:`confounding`, the one place that counts and words it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from cxrclf.labels import FINDINGS

__all__ = ["Confounding", "confounding"]


@dataclass(frozen=True)
class Confounding:
    """Images per finding and source (findings in :data:`~cxrclf.labels.FINDINGS` order, sources sorted)."""

    findings: tuple[str, ...]
    sources: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]  # counts[i][j]: images of findings[i] from sources[j]

    def count(self, finding: str, source: str) -> int:
        return self.counts[self.findings.index(finding)][self.sources.index(source)]

    @property
    def single_source(self) -> dict[str, str]:
        """Finding -> its only source, for every finding that comes from one source while the data hold several.

        When the data hold a single source, no finding can be told from the others by its
        archive, so none is listed.
        """
        if len(self.sources) < 2:
            return {}
        return {finding: self.sources[row.index(max(row))] for finding, row in zip(self.findings, self.counts) if sum(n > 0 for n in row) == 1}

    @property
    def warnings(self) -> tuple[str, ...]:
        """One plain line per finding in :attr:`single_source`."""
        return tuple(f"{finding} comes only from {source}: a model can learn the archive instead of the disease"
                     for finding, source in self.single_source.items())

    def table(self) -> dict[str, dict[str, int]]:
        """Finding -> {source: images, ..., "total": images}."""
        return {finding: dict(zip(self.sources, row)) | {"total": sum(row)} for finding, row in zip(self.findings, self.counts)}

    def to_dict(self) -> dict:
        return {"finding_x_source": self.table(), "single_source_findings": self.single_source, "warnings": list(self.warnings)}


def confounding(findings: Iterable[str], sources: Iterable[str]) -> Confounding:
    """The table of one image per (finding, source) pair given, e.g. a manifest's two columns (pure)."""
    pairs = Counter(zip(map(str, findings), map(str, sources)))
    present = {finding for finding, _ in pairs}
    ordered = [f for f in FINDINGS if f in present] + sorted(present - set(FINDINGS))  # other tools' manifests may name other findings
    source_names = sorted({source for _, source in pairs})
    counts = tuple(tuple(pairs.get((finding, source), 0) for source in source_names) for finding in ordered)
    return Confounding(tuple(ordered), tuple(source_names), counts)
