"""Copy the bundled sample images (byte for byte) from the development pools' held-out test split.

A developer's tool, run once when the pools or their manifests change (never at demo run time):

    .venv/bin/python experiments/build_samples.py --pools ../shared/datasets/pools

For each dataset it takes, per class, ``--per-class`` images of the pool manifest's **test** split
(``data_manifests/<dataset>_pool.csv``; seeded choice among files under ``--max-kb``), copies them and
their BUSI masks into ``medvit/assets/samples/<dataset>/`` and writes ``medvit/assets/samples/samples.csv``.
Test-split images were not used to train or select the embedded demo models (their manifests are the same files),
so ``seen_in_training`` is ``false`` for every sample.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np

from medvit.data.manifest import read_manifest

_logger = logging.getLogger("medvit.samples")

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "medvit" / "assets" / "samples"
POOL_FOLDERS = {"busi": "busi_256", "ham10000": "ham10000_200x150", "eyepacs": "eyepacs_256"}


def build_samples(pools: Path, manifests: Path, per_class: int, max_kb: int, seed: int) -> list[dict[str, str]]:
    """Copy the chosen files and return the ``samples.csv`` rows."""
    rows = []
    rng = np.random.default_rng(seed)
    for dataset, folder in POOL_FOLDERS.items():
        manifest = manifests / f"{dataset}_pool.csv"
        root = pools / folder
        frame = read_manifest(manifest)
        test = frame[frame["split"] == "test"].sort_values("image")
        out = HERE / dataset
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for label in sorted(test["label"].unique()):
            members = test[test["label"] == label]
            members = members[[(root / p).stat().st_size <= max_kb * 1024 for p in members["image"]]]
            chosen = members.iloc[sorted(rng.choice(len(members), size=min(per_class, len(members)), replace=False))]
            for _, item in chosen.iterrows():
                source = root / item["image"]
                target = out / source.name
                shutil.copyfile(source, target)
                masks = []
                for mask in filter(None, str(item.get("mask", "") or "").split(";")):
                    shutil.copyfile(root / mask, out / Path(mask).name)
                    masks.append(f"{dataset}/{Path(mask).name}")
                rows.append(
                    {
                        "path": f"{dataset}/{target.name}",
                        "dataset": dataset,
                        "label": item["label_name"],
                        "mask": ";".join(masks),
                        "seen_in_training": "false",
                        "source": f"pools/{folder}/{item['image']}",
                        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                    }
                )
    return rows


def main() -> None:
    """Parse arguments, copy the samples and write ``samples.csv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=Path, default=REPO.parent / "shared" / "datasets" / "pools")
    parser.add_argument("--manifests", type=Path, default=REPO / "data_manifests")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--max-kb", type=int, default=110, help="skip larger files (keeps the repo small)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = build_samples(args.pools, args.manifests, args.per_class, args.max_kb, args.seed)
    with open(HERE / "samples.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    total = sum((HERE / row["path"]).stat().st_size for row in rows)
    _logger.info("wrote %d samples (%.1f MB of images) and %s", len(rows), total / 2**20, HERE / "samples.csv")


if __name__ == "__main__":
    main()
