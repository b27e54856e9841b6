"""The volumes are sized from `chimera-merge build --dry-run` on R1T2's recipe, recomputed here.

The real parents are 2 TB on the Hub; the dry run needs only their headers. merge.synthetic writes a parent with
DeepSeek-V3's exact tensors, dtypes and shards but sparse data (~20 MB on disk for 688.6 GB), and the three
parents of R1T2 (V3-0324, R1, R1-0528) share that layout, so the dry run of merge/recipes/r1t2.yaml over it
gives the real byte counts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from deploy_helpers import REPO, one

from merge.checkpoint import Checkpoint
from merge.synthetic import synthetic_config, write_sparse_parent

# DeepSeek-V3's config.json shapes (tests/merge/test_synthetic.py checks these give its 91,991 tensors).
FULL_V3 = synthetic_config(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                           num_hidden_layers=61, num_nextn_predict_layers=1, first_k_dense_replace=3,
                           n_routed_experts=256, num_attention_heads=128, q_lora_rank=1536, qk_nope_head_dim=128,
                           v_head_dim=128)  # fmt: skip
UNITS = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity(q: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", q).groups()
    return int(number) * UNITS[unit]


def dry_run_bytes(tmp: Path) -> tuple[int, float, float]:
    """(bytes of the three parents on disk, dry run's bytes to read, dry run's bytes to write) for r1t2.yaml."""
    layout = write_sparse_parent(tmp / "deepseek-v3-layout", FULL_V3)
    recipe = yaml.safe_load((REPO / "merge/recipes/r1t2.yaml").read_text())
    for name in recipe["parents"]:  # one sparse layout stands in for each (same tensors, same bytes)
        (tmp / name).symlink_to(layout, target_is_directory=True)
        recipe["parents"][name] = str(tmp / name)
    (tmp / "r1t2.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [
        sys.executable,
        "-m",
        "merge.cli",
        "build",
        str(tmp / "r1t2.yaml"),
        "--out",
        str(tmp / "out"),
        "--dry-run",
    ]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300).stdout
    read, write = re.search(
        r"bytes to read ([\d.]+) TB, to write ([\d.]+) GB", " ".join(out.split())
    ).groups()
    parents = len(recipe["parents"]) * Checkpoint.open(layout).total_bytes
    return parents, float(read) * 1e12, float(write) * 1e9


def test_pvcs_hold_what_the_dry_run_says(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    parents, read, write = dry_run_bytes(tmp_path)
    assert parents == 3 * 688_574_839_360 and 680e9 < write < 700e9 and read < parents
    cache = quantity(
        one(rendered["merge"], "PersistentVolumeClaim", "chimera-hf-cache")["spec"]["resources"]["requests"][
            "storage"
        ]
    )
    for overlay, objs in rendered.items():
        model = quantity(
            one(objs, "PersistentVolumeClaim", "chimera-model")["spec"]["resources"]["requests"]["storage"]
        )
        # Room for the whole child (shards, index, manifest, tokenizer), not twice its size.
        assert 1.05 * write <= model <= 1.5 * write, overlay
    # The Hub cache holds every shard of all three parents (merge/sources.py downloads whole snapshots).
    assert 1.05 * parents <= cache <= 1.5 * parents
