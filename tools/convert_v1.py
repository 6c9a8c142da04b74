"""Convert an nnU-Net v1 3d_fullres checkpoint (e.g. Task008_HepaticVessel) into nnU-Net v2 files, from the shell.

`python -m tools.convert_v1 SOURCE OUT_DIR [--fold 0] [--force] [--pad-kernels]`: the command line over
`lib.model.convert_v1.convert` (what it reads and writes is described there). Bad input: one line, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.model.convert_v1 import TransferError, convert
from tools import errors


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a `TransferError`, printed to stderr)."""
    ap = argparse.ArgumentParser(prog="python -m tools.convert_v1",
                                 description="Convert an nnU-Net v1 3d_fullres checkpoint to nnU-Net v2 files.")
    ap.add_argument("source", type=Path, help="the v1 model zip (e.g. Task008_HepaticVessel.zip) or its folder")
    ap.add_argument("out_dir", type=Path, help="folder for plans.json, pretrained_weights.pth, conversion.json")
    ap.add_argument("--fold", default="0", help="fold to convert: 0-4 or 'all' (default 0)")
    ap.add_argument("--force", action="store_true", help="overwrite existing output files")
    ap.add_argument("--pad-kernels", action="store_true",
                    help="convert unequal v1 kernels by zero-padding to the larger kernel per level")
    args = ap.parse_args(argv)
    try:
        out = convert(args.source, args.out_dir, fold=args.fold, force=args.force, pad_kernels=args.pad_kernels)
    except (TransferError, OSError) as exc:  # bad input, or the output folder cannot be written
        print(f"error: {errors.one_line(exc)}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    report = json.loads((out / "conversion.json").read_text())
    print(f"converted {report['checkpoint']} ({report['fold']}, epoch {report['epoch']}) -> {out}: "
          f"{report['keys']['v2_with_aliases']} v2 keys from {report['keys']['v1_state_dict']} v1 keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
