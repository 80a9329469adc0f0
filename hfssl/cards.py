"""Model cards rendered from the Jinja templates in hfssl/model_cards through huggingface_hub.ModelCard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["classifier_card", "lineage_text", "masked_image_card", "masked_lm_card", "render_card"]

TEMPLATES = Path(__file__).parent / "model_cards"


def lineage_text(lineage: dict[str, Any]) -> str:
    """One line per stage, newest first, following the `parent` chain recorded in hfssl.json."""
    lines, stage = [], lineage
    while stage:
        base = stage.get("base_model") or "random initialisation"
        lines.append(f"- **{stage.get('pretext', stage.get('recipe', '?'))}** on `{stage.get('data', '?')}`, starting from `{base}`")
        stage = stage.get("parent")
    return "\n".join(lines)


def render_card(
    template: str,
    card_data: ModelCardData,
    **fields: Any,
) -> ModelCard:
    """Render `model_cards/<template>.md`; `fields` fill the template's placeholders."""
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES / f"{template}.md"), **fields)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def masked_lm_card(record: dict[str, Any], tokenizer: Any) -> ModelCard:
    """The local card of a masked-token pretraining run (facts all read from its hfssl.json record)."""
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    mask = tokenizer.mask_token
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["hfssl", "masked-lm", "self-supervised"],
        base_model=lineage.get("base_model") if lineage.get("base_model") and "/" in lineage["base_model"] and not lineage["base_model"].startswith((".", "/")) else None,
    )
    facts = [
        ("pretext", f"masked-token modeling, {opts['masking']['mlm_probability']:.0%} of tokens"
                    + (" (whole words)" if opts["masking"]["whole_word_mask"] else "")),
        ("training data", f"`{lineage['data']}`"),
        ("starting point", f"`{lineage['base_model']}`" if lineage.get("base_model") else f"random init, preset `{opts['model']['model_preset'] or 'tiny'}`"),
        ("tokens seen", f"{metrics.get('train_tokens', 0):,}"),
        ("sequence length", record["max_seq_length"]),
        ("steps", opts["training"]["max_steps"]),
        ("precision", "bf16 autocast" if opts["training"]["bf16"] else "fp32"),
        ("hardware", record["hardware"]),
        ("wall time", f"{metrics.get('train_runtime', 0):.0f} s"),
    ]
    shown = ("eval_mlm_loss", "eval_perplexity", "eval_masked_accuracy", "train_tokens_per_second")
    return render_card(
        "pretrained",
        data,
        title="Masked-token pretrained encoder",
        summary="A BERT-style encoder pretrained by predicting masked tokens. Fine-tune it on a labeled task "
        "(for example with hfssl's `finetune_text.py`) or use it for fill-mask.",
        recipe="mlm",
        pretext="masked-lm",
        usage=(
            "from transformers import pipeline\n"
            "fill = pipeline(\"fill-mask\", model=\"PATH_OR_REPO_ID\")\n"
            f"print(fill(\"The function returns a {mask} of strings.\"))"
        ),
        facts=facts,
        metrics=[(k.removeprefix("eval_"), _fmt(metrics[k])) for k in shown if k in metrics],
        plots=[("loss curve", "loss_curve.png")],
        lineage=lineage_text(lineage),
        limitations="Trained briefly on a small corpus: its fill-mask guesses are rough, and it is meant as a "
        "starting point for fine-tuning on text like its training data, not as a general-purpose model.",
    )


def _hub_id(name: str | None) -> str | None:
    """`name` when it looks like a Hub model id (for the card's base_model), else None."""
    return name if name and "/" in name and not name.startswith((".", "/", "~")) else None


def masked_image_card(record: dict[str, Any]) -> ModelCard:
    """The local card of a masked-image (MAE / SimMIM) pretraining run, all facts read from its hfssl.json record."""
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    masking, model = opts["masking"], opts["model"]
    method = masking["method"]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=["hfssl", "vit", method, "masked-image-modeling", "self-supervised"],
        base_model=_hub_id(lineage.get("base_model")),
    )
    pretext = (f"MAE: the encoder sees {1 - masking['mask_ratio']:.0%} of the patches, a decoder predicts the rest"
               + (" (per-patch normalised pixels)" if masking["norm_pix_loss"] else "")) if method == "mae" else (
               f"SimMIM: {masking['mask_ratio']:.0%} of the patches masked ({masking['mask_type']} masks), pixels predicted")
    facts = [
        ("pretext", pretext),
        ("training data", f"`{lineage['data']}`" + (f" ({record['skipped_images']} unreadable images skipped)" if record.get("skipped_images") else "")),
        ("starting point", f"`{lineage['base_model']}`" if lineage.get("base_model") else f"random init, preset `{model['model_preset']}`"),
        ("image size / patch size / channels", f"{record['image_size']} / {record['patch_size']} / {record['num_channels']}"),
        ("images seen", f"{metrics.get('train_images', 0):,}"),
        ("steps", opts["training"]["max_steps"]),
        ("precision", "bf16 autocast" if opts["training"]["bf16"] else "fp32"),
        ("hardware", record["hardware"]),
        ("wall time", f"{metrics.get('train_runtime', 0):.0f} s"),
    ]
    shown = {
        "eval_loss": "held-out reconstruction loss",
        "eval_knn_accuracy": "kNN accuracy (k=%d)" % opts["probe"]["knn_k"],
        "start_knn_accuracy": "kNN accuracy before pretraining",
        "eval_linear_probe_accuracy": "linear-probe accuracy",
        "start_linear_probe_accuracy": "linear-probe accuracy before pretraining",
        "train_images_per_second": "training images / s",
    }
    return render_card(
        "pretrained",
        data,
        title=f"{method.upper() if method == 'mae' else 'SimMIM'}-pretrained ViT encoder",
        summary="A Vision Transformer encoder pretrained by reconstructing masked image patches. Fine-tune it on a "
        "labeled task (for example with hfssl's `finetune_image.py`), or use its features directly. "
        "kNN and linear-probe accuracies use the mean of the final patch tokens.",
        recipe="mim",
        pretext=method,
        usage=(
            "from transformers import AutoImageProcessor, ViTForImageClassification\n"
            "processor = AutoImageProcessor.from_pretrained(\"PATH_OR_REPO_ID\")\n"
            "model = ViTForImageClassification.from_pretrained(\"PATH_OR_REPO_ID\", num_labels=10)  # only the classifier is new\n"
            "logits = model(**processor(images=image, return_tensors=\"pt\")).logits"
        ),
        facts=facts,
        metrics=[(label, _fmt(metrics[k])) for k, label in shown.items() if k in metrics],
        plots=[("loss curve", "loss_curve.png"), ("original | masked | reconstruction", "reconstructions.png")],
        lineage=lineage_text(lineage),
        limitations="Pretrained briefly on a small image set: its features suit images like its training data. "
        "The encoder has no pooler; `AutoModel` adds an untrained one, so use `last_hidden_state` for features.",
    )


_STRATEGY_NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA adapters + classifier",
    "linear_probe": "linear probe (backbone frozen)",
    "freeze": "partial fine-tuning (bottom layers frozen)",
    "lp_ft": "linear probe, then full fine-tuning (LP-FT)",
}


def _classifier_usage(record: dict[str, Any], task: str) -> str:
    """How to load this output: a plain model, or (LoRA) the adapter on the base model saved with it."""
    if record["options"]["transfer"]["strategy"] != "lora":
        return (f"from transformers import pipeline\nclassify = pipeline(\"{task}\", model=\"PATH\")\n"
                + ("print(classify(\"Return the event loop of the current thread.\"))" if task == "text-classification"
                   else "print(classify(\"image.png\"))"))
    if task == "text-classification":
        return ("from peft import AutoPeftModelForSequenceClassification, PeftModel\n"
                "model = AutoPeftModelForSequenceClassification.from_pretrained(\"PATH\")  # adapter + PATH/base_model\n"
                "# or: pipeline(\"text-classification\", model=\"PATH\")\n"
                "# adapter_config.json names base_model/ by its absolute path; after moving the folder:\n"
                "# from transformers import AutoModelForSequenceClassification\n"
                "# model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(\"PATH/base_model\"), \"PATH\")")
    return ("from peft import PeftModel\nfrom transformers import AutoModelForImageClassification\n"
            "base = AutoModelForImageClassification.from_pretrained(\"PATH/base_model\")\n"
            "model = PeftModel.from_pretrained(base, \"PATH\")")


def classifier_card(record: dict[str, Any]) -> ModelCard:
    """The local card of a transfer (fine-tuning) run, all facts read from its hfssl.json record."""
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    transfer, training = opts["transfer"], opts["training"]
    task = "text-classification" if record["recipe"] == "finetune_text" else "image-classification"
    data = ModelCardData(
        library_name="peft" if transfer["strategy"] == "lora" else "transformers",
        pipeline_tag=task,
        tags=["hfssl", "transfer-learning", transfer["strategy"]],
        base_model=_hub_id(lineage.get("base_model")),
    )
    start = (f"`{lineage['base_model']}`" if lineage.get("base_model")
             else f"random weights (architecture of `{lineage.get('architecture_of') or 'a preset'}`): the from-scratch control")
    extras = [name for name, on in (
        (f"layer-wise LR decay {transfer['layer_decay']}", transfer["layer_decay"]),
        (f"L2-SP alpha {transfer['l2sp_alpha']}", transfer["l2sp_alpha"]),
        (f"label smoothing {training['label_smoothing_factor']}", training["label_smoothing_factor"]),
        ("balanced class weights", transfer["class_weights"] == "balanced"),
    ) if on]
    facts = [
        ("task", f"{len(record['labels'])} classes: {', '.join(record['labels'][:12])}{' ...' if len(record['labels']) > 12 else ''}"),
        ("training data", f"`{lineage['data']}`"),
        ("starting point", start),
        ("strategy", _STRATEGY_NAMES[transfer["strategy"]] + (f", {', '.join(extras)}" if extras else "")),
        ("trainable parameters", f"{metrics['trainable_parameters']:,} of {metrics['full_parameters']:,}"),
        ("precision", "bf16 autocast" if training["bf16"] else "fp32"),
        ("hardware", record["hardware"]),
        ("wall time", f"{metrics.get('train_runtime', 0):.0f} s"),
    ]
    shown = {"eval_accuracy": "accuracy", "eval_f1_macro": "macro F1", "eval_precision_macro": "macro precision",
             "eval_recall_macro": "macro recall", "eval_majority_accuracy": "majority-class baseline accuracy"}
    scores = [(label, _fmt(metrics[k])) for k, label in shown.items() if k in metrics]
    seeds = record.get("seed_results")
    if seeds:
        scores += [(f"{label} over seeds {','.join(map(str, seeds['seeds']))}",
                    f"{seeds[k + '_mean']:.4g} ± {seeds[k + '_std']:.2g}") for k, label in shown.items() if f"{k}_mean" in seeds]
    return render_card(
        "finetuned",
        data,
        title=f"{'Text' if task == 'text-classification' else 'Image'} classifier ({_STRATEGY_NAMES[transfer['strategy']]})",
        summary="A classifier transferred from a pretrained encoder to a small labeled task.",
        recipe=record["recipe"],
        strategy=transfer["strategy"],
        usage=_classifier_usage(record, task),
        facts=facts,
        metrics=scores,
        eval_samples=metrics.get("eval_samples", "?"),
        per_class=list(record["per_class"].items()),
        lineage=lineage_text(lineage),
        limitations="Trained briefly on a small labeled set: expect it to work on data like its training data only. "
        "The scores are from one held-out split" + (" and several seeds." if seeds else "; pass --seeds 1,2,3 to see their spread."),
    )
