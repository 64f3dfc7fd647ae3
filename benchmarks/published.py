"""This harness against the published Video-XL-2 evaluation: prompts equal to the logged ones, selection files load.

    git clone https://github.com/VectorSpaceLab/Video-XL
    python benchmarks/published.py Video-XL [--json PATH]

For every published per-sample log of Video-MME and LVBench (``Video-XL-2/eval/lvu/{pure,w_chunk,w_chunk_bilevel}/
logs``), the logged dataset rows are written back in the benchmark's file layout and read by ``videoxl eval``'s task;
each question must equal the logged prompt after the published ``mm:ss`` rewrite (videoxl/eval/published.py). Every
selection file (``w_chunk_bilevel/selected_infos``) must load. Logs missing from a clone (large files kept out of a
shallow copy) are listed as missing. Prints one line per file; exits 1 if anything differs or fails to load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.errors import InputError  # noqa: E402
from videoxl.eval.published import CHECKED, prompt_check  # noqa: E402
from videoxl.eval.selection import read_selection  # noqa: E402

LOGS = {"videomme": "*/logs/*videomme*/*/videomme_*.json", "lvbench": "*/logs/*lvbench*/*/lvbench_*.json"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a clone of github.com/VectorSpaceLab/Video-XL")
    parser.add_argument("--json", type=Path, help="write the per-file results here")
    args = parser.parse_args()
    lvu = args.clone / "Video-XL-2" / "eval" / "lvu"
    rows, ok = [], True
    for task in CHECKED:
        for path in sorted(lvu.glob(LOGS[task])):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                rows.append({"file": str(path.relative_to(lvu)), "error": str(e)})
                ok = False
                continue
            with tempfile.TemporaryDirectory() as folder:
                result = prompt_check(task, data["logs"], Path(folder))
            ok &= not result["mismatches"]
            rows.append({"file": str(path.relative_to(lvu)), "task": task, "prompts": result["samples"],
                         "equal": result["equal"], "first_mismatch": (result["mismatches"] or [None])[0]})
    for path in sorted((lvu / "w_chunk_bilevel" / "selected_infos").rglob("*.json")):
        try:
            selection = read_selection(path)
            rows.append({"file": str(path.relative_to(lvu)), "selection_entries": len(selection.entries),
                         "null_topk": sum(e.topk is None for e in selection.entries.values())})
        except InputError as e:
            rows.append({"file": str(path.relative_to(lvu)), "error": str(e)})
            ok = False
    for row in rows:
        if "prompts" in row:
            print(f"{row['equal']:>5} of {row['prompts']:>5} prompts equal  {row['file']}")
        elif "selection_entries" in row:
            print(f"loads: {row['selection_entries']:>5} entries ({row['null_topk']} with a null selected_topk)  "
                  f"{row['file']}")
        else:
            print(f"FAILED: {row['error']}  {row['file']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
