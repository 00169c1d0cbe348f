"""Generate seglab's embedded synthetic dataset in Pascal VOC layout (what `data=synthetic` uses).

python scripts/make_synthetic_voc.py [--root DIR] [--num-train N] [--num-val N] [--seed S] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if (
    str(REPO_ROOT) not in sys.path
):  # `python scripts/...` puts scripts/, not the repository, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from src.data.synthetic import (  # noqa: E402
    SyntheticSpec,
    generate_synthetic_voc,
    synthetic_is_current,
)
from src.utils.errors import UserError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; defaults are SyntheticSpec's, the root is the one `data=synthetic` uses."""
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT / "data" / "synthetic",
        help="folder to hold VOCdevkit/VOC2012 (default: <repo>/data/synthetic)",
    )
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--force", action="store_true", help="regenerate even if the stamp matches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the dataset and say where it is."""
    args = parse_args(argv)
    try:
        spec = SyntheticSpec(num_train=args.num_train, num_val=args.num_val, seed=args.seed)
        if not args.force and synthetic_is_current(args.root, spec):
            action, voc = "reused", args.root / "VOCdevkit" / "VOC2012"
        else:
            action, voc = "wrote", generate_synthetic_voc(args.root, spec)
    except UserError as err:
        print(f"make_synthetic_voc: error: {err}", file=sys.stderr)
        return 2
    images = len(list((voc / "JPEGImages").glob("*.jpg")))
    print(
        f"{action} {voc}: {images} images ({spec.num_train} train, {spec.num_val} val) with masks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
