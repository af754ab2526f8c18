"""The built-in demo: synthetic phantoms in the three source layouts, run through every stage.

Nothing is downloaded. Each stage writes the same folders a user's real run would, under
one output folder, so the demo doubles as an example of the layout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cxrclf.errors import CxrclfError


@dataclass
class DemoResult:
    out: Path
    stages: dict[str, dict] = field(default_factory=dict)


def run_demo(out: Path, seed: int = 0, per_class: int = 40, overwrite: bool = False, announce=lambda stage, detail: None) -> DemoResult:
    from cxrclf.data import audit, synthetic
    from cxrclf.data.fuse import FuseOptions, fuse

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CxrclfError("demo folder exists and is not empty (pass --overwrite to replace it)", out)
        shutil.rmtree(out)
    result = DemoResult(out)
    # each stage writes its own folder atomically, as the commands do
    sources = synthetic.write_sources(out / "sources", seed=seed, per_class=per_class, size=256)
    announce("sources", f"synthetic Cohen, RSNA (DICOM) and NLM phantoms in {out / 'sources'}")
    options = FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], seed=seed)
    report = fuse(options, out / "data" / "fused")
    result.stages["fuse"] = report
    announce("fuse", f"{report['images']} images of {report['patients']} patients -> {out / 'data' / 'fused'}")
    found = audit.audit(out / "data" / "fused")
    result.stages["audit"] = found
    if found["leakage"]:
        raise CxrclfError("the demo's fused dataset failed its own leakage audit", out / "data" / "fused")
    announce("audit", "no patient or image shared between splits")
    return result
