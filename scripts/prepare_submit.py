"""Check the six course prediction files against their input CSVs and zip them with the code for upload.

    python scripts/prepare_submit.py                                  # predictions/ → submission.zip
    python scripts/prepare_submit.py --predictions results/ablations/smart/seed11711/predictions
    python scripts/prepare_submit.py --check_only

Every file must have the course's exact header, one row per id of the matching input file in
the same order, and values in range (sentiment 0-4, paraphrase 0/1, similarity a float in
[0, 5]). A bad file is reported with its first bad line and nothing is zipped (exit code 1).
Once all six are good, the dev files are scored against the dev labels of --data_dir and the
scores printed on one line, so a wrong or stale run shows before it is uploaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from multitask.submission import build_zip, check_predictions, dev_score_line, dev_scores  # noqa: E402
from multitask.tasks import DATA_DIR  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", type=Path, default=Path("predictions"),
                   help="directory with sst-dev-output.csv, sst-test-output.csv, para-…, sts-…")
    p.add_argument("--data_dir", type=Path, default=DATA_DIR, help="the course input CSVs the ids come from")
    p.add_argument("--out", type=Path, default=Path("submission.zip"))
    p.add_argument("--check_only", action="store_true", help="validate the files, write no zip")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    good, problems = check_predictions(args.predictions, args.data_dir)
    for path, rows in good.items():
        print(f"ok   {path} ({rows} rows)")
    for problem in problems:
        print(f"BAD  {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} of {len(good) + len(problems)} prediction files are not ready; nothing zipped",
              file=sys.stderr)
        return 1
    try:
        print(dev_score_line(dev_scores(args.predictions, args.data_dir)))
    except ValueError as err:  # a dev file without usable labels: the files are still good to package
        print(f"dev scores not computed: {err}", file=sys.stderr)
    if args.check_only:
        return 0
    try:
        members = build_zip(args.out, REPO, list(good))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(good)} prediction files and {len(members) - len(good)} code files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
