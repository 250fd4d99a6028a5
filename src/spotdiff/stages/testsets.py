"""The `testsets` stage (`spotdiff testsets`): the four test sets in their official formats.

Reads: `params.testsets`. `source: standin` generates small offline stand-ins
(`spotdiff.data.standins`); `source: official` downloads the authors' archives from
`testsets.official_base_url`, verifies them against its SHA512SUMS and extracts them.
Writes: `<out>/` with one folder per set and `testsets.json` (name, folder, kind, pairs, stand-in or
not), built in a temporary sibling and swapped in with one rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from spotdiff.params import Params

REQUIRED = ("coco_inpainted_small", "coco_inpainted_medium", "coco_inpainted_large",
            "synthtext_change", "virat_std", "kubric_change")


def run(params: Params, out: str | Path) -> list[dict]:
    """Write the test sets into `out`; returns the listing written to `testsets.json`."""
    import torch

    from spotdiff.data import testsets as ts
    from spotdiff.data.standins import write_standins
    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import atomic_dir, write_json_atomic

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


def testsets(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `testsets`"),
    out: Path = typer.Option(Path("data/testsets"), help="output folder (one sub-folder per test set)"),
) -> None:
    """Write the four test sets: offline stand-ins, or the official ones (downloaded and verified)."""
    import time

    from spotdiff.params import load_params

    cfg = load_params(params)
    start = time.perf_counter()
    listing = run(cfg, out)
    seconds = time.perf_counter() - start
    for item in listing:
        tag = " (stand-in)" if item["is_standin"] else ""
        typer.echo(f"  {item['name']}{tag}: {item['pairs']} pairs in {out / item['path']}")
    typer.echo(f"testsets: {len(listing)} sets ({cfg.testsets.source}) -> {out} ({seconds:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command("testsets")(testsets)
