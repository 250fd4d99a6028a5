"""The `testsets` stage: the four test sets in their official formats.

Reads: `params.testsets`. `source: standin` generates small offline stand-ins
(`spotdiff.data.standins`); `source: official` downloads the authors' archives from
`testsets.official_base_url`, verifies them against its SHA512SUMS and extracts them.
Writes: `<out>/` with one folder per set and `testsets.json` (name, folder, kind, pairs, stand-in or
not), built in a temporary sibling and swapped in with one rename.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spotdiff.data import testsets as ts
from spotdiff.data.standins import write_standins
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_dir, write_json_atomic
from spotdiff.params import Params

REQUIRED = ("coco_inpainted_small", "coco_inpainted_medium", "coco_inpainted_large",
            "synthtext_change", "virat_std", "kubric_change")


def run(params: Params, out: str | Path) -> list[dict]:
    """Write the test sets into `out`; returns the listing written to `testsets.json`."""
    cfg = params.testsets
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image kornia ops: extra threads only contend
    try:
        with atomic_dir(out) as tmp:
            if cfg.source == "standin":
                write_standins(tmp, cfg.pairs_per_set, cfg.image_size, cfg.seed, cfg.no_change_fraction)
            else:
                ts.download(cfg.official_base_url, tmp, cfg.official_archives,
                            cache=Path(cfg.official_root) / "archives")
            found = ts.find_testsets(tmp)
            missing = [k for k in REQUIRED if k not in found]
            if cfg.source == "official" and missing:
                raise SpotdiffError(f"{cfg.official_base_url}: the downloaded archives hold no {missing[0]} "
                                    f"set (found: {', '.join(found) or 'none'}); check "
                                    "testsets.official_archives")
            listing = []
            for name, path in found.items():
                reader = ts.open_testset(path, name)
                listing.append({"name": name, "path": str(path.relative_to(tmp)), "kind": reader.kind,
                                "pairs": len(reader), "is_standin": reader.is_standin})
            write_json_atomic(tmp / "testsets.json", {"source": cfg.source, "sets": listing})
    finally:
        torch.set_num_threads(threads)
    return listing
