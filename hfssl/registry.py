"""The recipes hfssl ships, in one table: what the CLI, pipelines, model cards and benchmarks know about each.

Adding a recipe is one file, `recipes/<name>.py` (a `main(argv=None, *, dataset=None, **options) -> Result`
with OPTION_TYPES and DEFAULTS), plus one `Recipe` entry here. This module imports nothing heavy, so the
CLI's help and the card renderer can read it without loading torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from types import ModuleType

from hfssl.errors import OptionError

__all__ = ["ELECTRA_CARD_METRICS", "RECIPES", "Recipe", "load_recipe", "recipe", "recipe_names"]


@dataclass(frozen=True)
class Recipe:
    """One recipe: its entry point and the facts other parts of hfssl report about its runs."""

    name: str
    modality: str | None  # "text" | "image": a pipeline stage may start only from an earlier stage of the same modality
    summary: str  # one line, for `hfssl --help`
    headline: tuple[str, str] | None = None  # (metrics key, label): the one score a pipeline summary shows per stage
    # the held-out metrics a model card's model-index reports: (hfssl.json metrics key, metric id, shown name)
    card_metrics: tuple[tuple[str, str, str], ...] = ()
    sample_input: str | None = None  # the text a model card's usage code runs ({mask} marks the masked word)

    @property
    def module(self) -> str:
        """The importable module: hfssl.recipes.<name> (the file recipes/<name>.py of a checkout)."""
        return f"hfssl.recipes.{self.name}"


_CLASSIFICATION_METRICS = (
    ("eval_accuracy", "accuracy", "accuracy"),
    ("eval_f1_macro", "f1", "macro F1"),
    ("eval_precision_macro", "precision", "macro precision"),
    ("eval_recall_macro", "recall", "macro recall"),
    ("eval_loss", "loss", "cross-entropy loss"),
)

# `mlm --objective electra` saves the discriminator, so its card reports the discriminator's scores (the generator's
# masked-token loss is shown beside them, but it is not the saved model's).
ELECTRA_CARD_METRICS = (
    ("eval_rtd_accuracy", "accuracy", "replaced-token detection accuracy"),
    ("eval_rtd_loss", "loss", "replaced-token detection loss"),
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "mlm",
            "text",
            "masked-token (BERT-style) pretraining, from scratch or continued from a checkpoint",
            headline=("eval_mlm_loss", "eval MLM loss"),
            card_metrics=(
                ("eval_mlm_loss", "loss", "masked-token loss"),
                ("eval_perplexity", "perplexity", "perplexity"),
                ("eval_masked_accuracy", "accuracy", "masked-token accuracy"),
            ),
            sample_input="Return the {mask} of the list, or None when the iterator is exhausted.",
        ),
        Recipe(
            "tsdae",
            "text",
            "sentence-level denoising (TSDAE) of a pretrained sentence encoder",
            headline=("eval_loss", "reconstruction loss"),
            card_metrics=(("eval_loss", "loss", "reconstruction loss"),),
            sample_input="Return the running event loop of the current thread.",
        ),
        Recipe(
            "finetune_text",
            "text",
            "text classification: full, LoRA, linear probe, partial freezing, LP-FT",
            headline=("eval_accuracy", "accuracy"),
            card_metrics=_CLASSIFICATION_METRICS,
            sample_input="Return the running event loop of the current thread.",
        ),
        Recipe(
            "mim",
            "image",
            "masked-patch pretraining of a ViT (MAE or SimMIM)",
            headline=("eval_knn_accuracy", "kNN accuracy"),
            card_metrics=(
                ("eval_loss", "loss", "reconstruction loss"),
                ("eval_knn_accuracy", "accuracy", "kNN accuracy"),
                ("eval_linear_probe_accuracy", "accuracy", "linear-probe accuracy"),
            ),
        ),
        Recipe(
            "finetune_image",
            "image",
            "image classification: full, LoRA, linear probe, partial freezing, LP-FT",
            headline=("eval_accuracy", "accuracy"),
            card_metrics=_CLASSIFICATION_METRICS,
        ),
        Recipe(
            "clip",
            "vision-text",
            "vision-text alignment (CLIP or SigLIP loss) of a text and an image encoder: zero-shot classification, retrieval",
            headline=("eval_zero_shot_accuracy", "zero-shot accuracy"),
            card_metrics=(
                ("eval_zero_shot_accuracy", "accuracy", "zero-shot accuracy (caption template)"),
                ("eval_zero_shot_ensemble_accuracy", "accuracy", "zero-shot accuracy (prompt ensemble)"),
                ("eval_image_to_text_recall@1", "recall", "image-to-text recall@1"),
                ("eval_image_to_text_recall@5", "recall", "image-to-text recall@5"),
                ("eval_text_to_image_recall@1", "recall", "text-to-image recall@1"),
                ("eval_text_to_image_recall@5", "recall", "text-to-image recall@5"),
                ("eval_loss", "loss", "contrastive loss"),
            ),
        ),
        Recipe("pipeline", None, "chain recipes in one YAML file (hfssl run pipeline.yaml)"),
    )
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def recipe(name: str) -> Recipe:
    """The registry entry of `name` ("finetune-text" and "finetune_text" are the same); a wrong name raises OptionError."""
    key = name.replace("-", "_")
    if key not in RECIPES:
        close = difflib.get_close_matches(key, RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"no recipe {name!r}.{hint} Recipes: {', '.join(recipe_names())}.")
    return RECIPES[key]


def load_recipe(name: str) -> ModuleType:
    """The recipe's module (hfssl.recipes.<name>: the same file `accelerate launch recipes/<name>.py` runs)."""
    return importlib.import_module(recipe(name).module)
