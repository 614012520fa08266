"""python -m bksdm.eval.table eval/*/metrics.json: evaluation results side by side with the paper's numbers.

The published zero-shot MS-COCO 30K figures (BK-SDM, arXiv 2305.15798) are keyed by the hub id of each
released model; a result whose ``model`` is one of them gets the paper's FID, IS and CLIP score next to
its own, so a reproduction shows its gap at a glance. ``eval=miniworld`` results get a table of their own
(the mini world's scores), after the FID / IS / CLIP one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# hub id -> (name in the paper, FID, IS, CLIP score)
PUBLISHED = {
    "compvis/stable-diffusion-v1-4": ("SD-v1.4", 13.05, 36.76, 0.2958),
    "nota-ai/bk-sdm-base": ("BK-SDM-Base", 15.76, 33.79, 0.2878),
    "nota-ai/bk-sdm-small": ("BK-SDM-Small", 16.98, 31.68, 0.2677),
    "nota-ai/bk-sdm-tiny": ("BK-SDM-Tiny", 17.12, 30.09, 0.2653),
    "nota-ai/bk-sdm-base-2m": ("BK-SDM-Base-2M", 14.81, 34.17, 0.2883),
    "nota-ai/bk-sdm-small-2m": ("BK-SDM-Small-2M", 17.05, 33.10, 0.2734),
    "nota-ai/bk-sdm-tiny-2m": ("BK-SDM-Tiny-2M", 17.53, 31.32, 0.2690),
    "stabilityai/stable-diffusion-2-1-base": ("SD-v2.1-base", 13.93, 35.93, 0.3075),
    "nota-ai/bk-sdm-v2-base": ("BK-SDM-v2-Base", 15.85, 31.70, 0.2868),
    "nota-ai/bk-sdm-v2-small": ("BK-SDM-v2-Small", 16.61, 31.73, 0.2901),
    "nota-ai/bk-sdm-v2-tiny": ("BK-SDM-v2-Tiny", 15.68, 31.64, 0.2897),
}


def load_result(path: str | Path) -> dict:
    """A ``metrics.json`` written by ``python -m bksdm.evaluate`` (or the folder holding it)."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist: give metrics.json files or evaluation folders"
        )
    result = json.loads(path.read_text())
    needed = MINIWORLD_KEYS if is_miniworld(result) else ("model", "fid", "is", "clip", "num_images")
    missing = [key for key in needed if key not in result]
    if missing:
        raise ValueError(f"{str(path)!r} is not a bksdm evaluation result: no {missing}")
    return result


MINIWORLD_KEYS = ("model", "fid", "accuracy/all", "error_to_teacher")


def is_miniworld(result: dict) -> bool:
    # results written before metrics.json named its protocol are told by their scores
    return result.get("protocol", "miniworld" if "accuracy/all" in result else None) == "miniworld"


def results_table(results: list[dict]) -> str:
    """Markdown tables: the FID / IS / CLIP results with their image counts and the paper's figures,
    then the mini-world results; a table only where there are results for it."""
    from bksdm.eval.protocols import miniworld_table

    prompts = [result for result in results if not is_miniworld(result)]
    miniworld = [result for result in results if is_miniworld(result)]
    tables = ([prompts_table(prompts)] if prompts else []) + (
        [miniworld_table(miniworld)] if miniworld else []
    )
    return "\n".join(tables)


def prompts_table(results: list[dict]) -> str:
    """Each result's FID / IS / CLIP and image count, and the paper's figures."""
    lines = [
        "| model | FID | IS | CLIP | images | paper FID | paper IS | paper CLIP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        paper = PUBLISHED.get(str(result["model"]).lower())
        published = f"{paper[1]:.2f} | {paper[2]:.2f} | {paper[3]:.4f}" if paper else "- | - | -"
        name = f"{result['model']} ({paper[0]})" if paper else result["model"]
        lines.append(
            f"| {name} | {result['fid']:.2f} | {result['is']:.2f} | {result['clip']:.4f} | "
            f"{result['num_images']} | {published} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bksdm.eval.table", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="metrics.json files or evaluation folders")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    table = results_table([load_result(path) for path in args.results])
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
