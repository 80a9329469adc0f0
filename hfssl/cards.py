"""Model cards rendered from the Jinja templates in hfssl/model_cards through huggingface_hub.ModelCard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["lineage_text", "masked_lm_card", "render_card"]

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
        ("starting point", f"`{lineage['base_model']}`" if lineage.get("base_model") else f"random init, preset `{opts['model']['model_preset']}`"),
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
