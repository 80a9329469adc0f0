"""The `hfssl` console script: run a recipe, print its options, or re-render a card.

hfssl mlm [config.yaml] [--key value ...]      one process; on several GPUs: accelerate launch -m hfssl.recipes.mlm ...
                                               (likewise tsdae, mim, finetune_text, finetune_image; in a checkout,
                                               accelerate launch recipes/mlm.py runs the same file)
                                               config.yaml: a file, or a preset shipped with hfssl (mlm_from_scratch.yaml)
hfssl run pipeline.yaml [--output_dir DIR]     run the stages of a pipeline file (same as: hfssl pipeline ...)
hfssl options mlm                              the recipe's options as a Markdown table
hfssl push OUTPUT_DIR --repo-id NAME [--private] [--revision R] [--endpoint URL]
                                               upload a finished output directory (token: HF_TOKEN or `hf auth login`)
hfssl card OUTPUT_DIR [--repo-id NAME]         re-render OUTPUT_DIR/README.md from its hfssl.json, to review before pushing
"""

from __future__ import annotations

import argparse
import sys

from hfssl.errors import OptionError
from hfssl.registry import load_recipe

__all__ = ["main"]


def push(argv: list[str]) -> None:
    """`hfssl push`: upload an output directory; failures exit with the reason and the command to retry."""
    parser = argparse.ArgumentParser(
        prog="hfssl push",
        description="Upload a finished output directory to the Hugging Face Hub (checkpoint-* folders left out). "
        "The repo is created if needed and ends up mirroring the directory. The token comes from HF_TOKEN or "
        "`hf auth login`; it is never printed.",
    )
    parser.add_argument("output_dir", help="a directory a recipe finished writing (it holds hfssl.json)")
    parser.add_argument("--repo-id", "--repo_id", required=True, help="NAMESPACE/NAME, or NAME for your own namespace")
    parser.add_argument(
        "--private", action="store_true", default=None, help="create the repo private (an existing repo keeps its visibility)"
    )
    parser.add_argument("--revision", help="branch to push to, created from main if missing (default: main)")
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    args = parser.parse_args(argv)

    from hfssl.hub import PushError, push_output

    try:
        url = push_output(args.output_dir, args.repo_id, private=args.private, revision=args.revision, endpoint=args.endpoint)
    except (PushError, ValueError) as err:
        raise SystemExit(f"hfssl push: {err}") from None
    print(f"Pushed {args.output_dir} to {url}")


def card(argv: list[str]) -> None:
    """`hfssl card`: re-render an output's model card from its hfssl.json, for review (or after editing it by hand)."""
    parser = argparse.ArgumentParser(
        prog="hfssl card",
        description="Re-render OUTPUT_DIR/README.md, the model card, from the output's hfssl.json and the files next to it. "
        "`hfssl push` re-renders an unedited card for the repo it pushes to; a card edited by hand is pushed as it is.",
    )
    parser.add_argument("output_dir", help="a directory a recipe finished writing (it holds hfssl.json)")
    parser.add_argument(
        "--repo-id", "--repo_id", help="NAMESPACE/NAME the card's code loads from (default: the output directory)"
    )
    args = parser.parse_args(argv)

    from hfssl.cards import write_card

    try:
        path = write_card(args.output_dir, args.repo_id)
    except ValueError as err:
        raise SystemExit(f"hfssl card: {err}") from None
    print(f"Wrote {path}")


def main(argv: list[str] | None = None) -> None:
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    except OptionError as err:  # a recipe name that does not exist
        raise SystemExit(f"hfssl: {err}") from None


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        from hfssl.registry import RECIPES

        print(__doc__ + "\nRecipes:\n" + "\n".join(f"    {r.name:<16} {r.summary}" for r in RECIPES.values()))
        return
    command, rest = argv[0], argv[1:]
    prog = f"hfssl {command}"
    if command == "run":  # recipes/pipeline.py
        command = "pipeline"
    if command == "push":
        push(rest)
        return
    if command == "card":
        card(rest)
        return
    if command == "options":
        from hfssl.option_docs import options_text

        print(options_text(rest[0] if rest else "mlm"))
        return
    from hfssl.api import script

    script(load_recipe(command).main, rest, prog=prog)


if __name__ == "__main__":
    main()
