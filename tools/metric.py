"""Score a submission against a solution with the leaderboard metric (`lib.metric`), from the command line.

`python -m tools.metric SOLUTION.csv SUBMISSION.csv [--device cuda]` prints {"score", "per_image"} as JSON; bad
input (a missing file, a malformed CSV or RLE, a device this machine lacks) is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib.data import DataError, read_table
from lib.metric import SOLUTION_COLUMNS, SubmissionError, score_submission
from tools import errors


def _check_device(device: str) -> None:
    """--device must name a torch device this machine has (a one-line error, not torch's traceback)."""
    import torch

    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:  # unknown device string, or CUDA not available
        errors.fail(f"--device {device}: not usable here ({errors.one_line(e)})")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, read both tables, score, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("solution", type=Path, help="CSV with id, rle, width, height, image, slice")
    parser.add_argument("submission", type=Path, help="CSV with id, rle")
    parser.add_argument("--device", default=None, help="torch device for the metric, e.g. cuda")
    args = parser.parse_args(argv)
    if args.device is not None:
        _check_device(args.device)
    with errors.expected_errors(DataError, SubmissionError):
        frames = [read_table(args.solution, SOLUTION_COLUMNS), read_table(args.submission, ("id", "rle"))]
        result = score_submission(*frames, device=args.device, names=(str(args.solution), str(args.submission)))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
