"""`spotdiff testsets`: the `testsets` DVC stage — the four test sets in their official formats.

`testsets.source: standin` generates small offline stand-ins (`spotdiff.data.standins`);
`testsets.source: official` downloads the authors' archives from `testsets.official_base_url`,
verifies them against its SHA512SUMS and extracts them. Either way the output folder is built in a
temporary sibling and swapped in with one rename, and `testsets.json` lists every set found (name,
folder, kind, pairs, stand-in or not).
"""

from __future__ import annotations

from pathlib import Path

import typer


def testsets(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `testsets`"),
    out: Path = typer.Option(Path("data/testsets"), help="output folder (one sub-folder per test set)"),
) -> None:
    """Write the four test sets: offline stand-ins, or the official ones (downloaded and verified)."""
    import time

    import torch

    from spotdiff.data import testsets as ts
    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import atomic_dir, write_json_atomic
    from spotdiff.params import load_params

    cfg = load_params(params).testsets
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image kornia ops: extra threads only contend
    try:
        with atomic_dir(out) as tmp:
            if cfg.source == "standin":
                from spotdiff.data.standins import write_standins

                write_standins(tmp, cfg.pairs_per_set, cfg.image_size, cfg.seed)
            else:
                ts.download(cfg.official_base_url, tmp, cfg.official_archives,
                            cache=Path(cfg.official_root) / "archives")
            found = ts.find_testsets(tmp)
            missing = [k for k in ("coco_inpainted_small", "coco_inpainted_medium", "coco_inpainted_large",
                                   "synthtext_change", "virat_std", "kubric_change") if k not in found]
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
    seconds = time.perf_counter() - start
    for item in listing:
        tag = " (stand-in)" if item["is_standin"] else ""
        typer.echo(f"  {item['name']}{tag}: {item['pairs']} pairs in {out / item['path']}")
    typer.echo(f"testsets: {len(listing)} sets ({cfg.source}) -> {out} ({seconds:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command("testsets")(testsets)
