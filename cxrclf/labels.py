"""Findings and label schemes: the single definition used by every stage.

A fused manifest stores a ``finding`` per image; a label scheme maps findings to the
paper's class numbers. Class order is the class number.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COVID19", "FINDINGS", "LabelScheme", "NORMAL", "OTHER_PNEUMONIA", "SCHEMES", "TUBERCULOSIS"]

NORMAL = "normal"
COVID19 = "covid19"
OTHER_PNEUMONIA = "other_pneumonia"
TUBERCULOSIS = "tuberculosis"

FINDINGS: tuple[str, ...] = (NORMAL, COVID19, OTHER_PNEUMONIA, TUBERCULOSIS)


@dataclass(frozen=True)
class LabelScheme:
    name: str
    classes: tuple[str, ...]
    finding_to_class: dict[str, str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, finding: str) -> int:
        """Class number of a finding; ``KeyError`` if the finding is not in this scheme."""
        return self.classes.index(self.finding_to_class[finding])


SCHEMES: dict[int, LabelScheme] = {
    2: LabelScheme(
        "binary",
        ("non_covid19", COVID19),
        {NORMAL: "non_covid19", COVID19: COVID19, OTHER_PNEUMONIA: "non_covid19", TUBERCULOSIS: "non_covid19"},
    ),
    3: LabelScheme(
        "3-class",
        (NORMAL, COVID19, "other"),
        {NORMAL: NORMAL, COVID19: COVID19, OTHER_PNEUMONIA: "other", TUBERCULOSIS: "other"},
    ),
    4: LabelScheme(
        "4-class",
        (NORMAL, COVID19, OTHER_PNEUMONIA, TUBERCULOSIS),
        {f: f for f in FINDINGS},
    ),
}
