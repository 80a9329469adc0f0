"""Vision-text alignment: a text and an image encoder joined into one model by a contrastive loss (CLIP or SigLIP).

    accelerate launch recipes/clip.py [config.yaml] [--key value ...]
    accelerate launch recipes/clip.py --text_model_name_or_path out/mlm --image_model_name_or_path out/mim

With no arguments: a smoke test of the mechanics on the embedded handwritten digits (scikit-learn's 1,797 8x8
images) captioned "a photo of a {digit}.", with both towers from scratch, in about a minute on a laptop CPU. The
saved model is transformers' `VisionTextDualEncoderModel` with its processor: `pipeline("zero-shot-image-
classification", model=out)` loads it. The summary shows zero-shot accuracy and retrieval recall beside chance,
before and after training.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import VisionTextDualEncoderProcessor, set_seed

from hfssl.api import Result, script
from hfssl.args import DualEncoderArguments, ImageTextDataArguments, PretrainingRunArguments, default_output_dir, parse_args
from hfssl.data.image_text import ImageTextCollator, PairDataset, load_image_text
from hfssl.data.images import decode_images, image_processor
from hfssl.dual_encoder import image_tower, join_towers, text_tower
from hfssl.errors import OptionError
from hfssl.models import use_fast_attention
from hfssl.outputs import parent_lineage
from hfssl.pretext.contrastive import AlignmentScorer, ContrastiveTrainer, DualEncoderContrastive, lock_tower
from hfssl.runs import finish_run, pretext_lineage, run_record, start_run
from hfssl.runtime import bf16_supported, precision_defaults
from hfssl.tokenizer import load_tokenizer, train_tokenizer

logger = logging.getLogger("hfssl.recipes.clip")

OPTION_TYPES = (ImageTextDataArguments, DualEncoderArguments, PretrainingRunArguments)
DEFAULTS = dict(
    output_dir=default_output_dir("clip"),
    per_device_train_batch_size=128,  # the batch is the contrastive task's set of negatives
    per_device_eval_batch_size=256,
    learning_rate=5e-4,
    weight_decay=0.1,  # not on the temperature (ContrastiveTrainer)
    warmup_steps=0.1,  # warmup and clipping: without them a small dual encoder sits at ln(batch) and collapses
    max_grad_norm=1.0,
    lr_scheduler_type="cosine",
    max_steps=400,
    crop_min_scale=0.9,
    optim="adamw_torch_fused",
    **precision_defaults(bf16_supported()),
    eval_strategy="steps",
    eval_steps=100,
    logging_steps=20,
    save_steps=200,
    save_total_limit=2,
    report_to="none",
    # Every parameter takes part in every step, so DDP need not search the autograd graph for unused ones (the
    # Trainer's default does, at every step, and warns that it found none).
    ddp_find_unused_parameters=False,
    remove_unused_columns=False,
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("clip", dataset=..., **options)`)."""
    data_args, model_args, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    if run_args.token_budget:
        raise OptionError("--token_budget counts text tokens (mlm.py); clip.py sizes a run with --time_budget or --max_steps.")
    resume, push = start_run(run_args)

    # Everything that can be wrong with the options, the data or the towers fails here, before decoding or training.
    pairs = load_image_text(data_args, seed=run_args.seed)
    text_source = model_args.text_model_name_or_path
    if text_source:
        tokenizer = load_tokenizer(text_source, "text_model_name_or_path", model_args.trust_remote_code)
    else:
        tokenizer = train_tokenizer(pairs.train_captions, model_args.vocab_size, "wordpiece")
    set_seed(run_args.seed)  # tower, projection and temperature initialisation follow --seed
    text = text_tower(text_source, model_args.text_preset, tokenizer, model_args.trust_remote_code, model_args.cache_dir)
    image = image_tower(
        model_args.image_model_name_or_path,
        model_args.image_preset,
        model_args.image_size,
        model_args.patch_size,
        model_args.trust_remote_code,
        model_args.cache_dir,
    )
    processor = image_processor(model_args.image_model_name_or_path, image.config, model_args.cache_dir)
    processor.do_convert_rgb = True  # what the Hub pipeline is given: any image, as RGB
    train, held_out = (
        decode_images(source, processor, 3, data_args.skip_corrupt_images, data_args.image_cache_dir)
        for source in (pairs.images.train, pairs.images.validation)
    )
    train_pairs, eval_pairs = PairDataset(train, pairs.train_captions), PairDataset(held_out, pairs.validation_captions)

    dual = join_towers(image, text, model_args.projection_dim)
    for tower, locked, unlocked in (
        ("image", model_args.lock_image, model_args.unlocked_image_layers),
        ("text", model_args.lock_text, model_args.unlocked_text_layers),
    ):
        if locked:
            module = dual.vision_model if tower == "image" else dual.text_model
            left = lock_tower(module, unlocked)
            logger.info(
                "--lock_%s: the %s tower is frozen but its top %d layers (%s parameters learn)",
                tower,
                tower,
                unlocked,
                f"{left:,}",
            )
    model = DualEncoderContrastive(dual, model_args.loss)
    use_fast_attention(dual.vision_model, run_args.device)
    use_fast_attention(dual.text_model, run_args.device)

    mean, std = processor.image_mean, processor.image_std
    collator = ImageTextCollator(tokenizer, mean, std, data_args.max_caption_length, data_args.crop_min_scale)
    held_labels = None if held_out.labels is None else held_out.labels.numpy()
    scorer = AlignmentScorer(
        (held_out.read().float() / 255 - _column(mean)) / _column(std),
        eval_pairs.captions,
        held_labels,
        pairs.images.class_names,
        data_args.caption_template,
        tokenizer,
        data_args.max_caption_length,
    )
    trainer = ContrastiveTrainer(
        model=model,
        args=run_args,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        data_collator=collator,
        processing_class=VisionTextDualEncoderProcessor(image_processor=processor, tokenizer=tokenizer),
        scorer=scorer,
    )
    start_scores = {f"start_{k}": v for k, v in scorer(dual).items()} if not resume else {}
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate(), **start_scores, "train_steps": trainer.state.global_step}

    skipped = len(train.skipped) + len(held_out.skipped)
    record = run_record(
        "clip",
        {**pretext_lineage(f"{model_args.loss}-alignment", pairs.images.description, None), "towers": tower_lineage(model_args)},
        dict(data=data_args, model=model_args, training=run_args),
        metrics,
        towers=dict(
            text=text_source or f"BERT {model_args.text_preset} (from scratch)",
            image=model_args.image_model_name_or_path or f"ViT {model_args.image_preset} (from scratch)",
        ),
        zero_shot_template=data_args.caption_template,
        class_names=pairs.images.class_names,
        skipped_images=skipped,
    )
    return finish_run(trainer, record, push, lambda: alignment_summary(metrics, run_args.output_dir, data_args.caption_template))


def tower_lineage(model_args: Any) -> dict[str, Any]:
    """Where each tower came from, with that model's own lineage when hfssl made it (an mlm or mim output)."""
    return {
        tower: {"model": path, "lineage": parent_lineage(path)} if path else {"model": None, "preset": preset}
        for tower, path, preset in (
            ("text", model_args.text_model_name_or_path, model_args.text_preset),
            ("image", model_args.image_model_name_or_path, model_args.image_preset),
        )
    }


def _column(values: Any) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def at_chance(metrics: dict[str, Any]) -> bool:
    """Whether held-out image-to-text recall@10 ended within 1.5x of its chance level (a collapsed or untrained model)."""
    recall, chance = metrics.get("eval_image_to_text_recall@10"), metrics.get("eval_image_to_text_recall@10_chance")
    return recall is not None and chance is not None and chance < 1 and recall <= 1.5 * chance


def alignment_summary(metrics: dict[str, Any], output_dir: str, template: str) -> str:
    """The recipe's closing lines: each score after and before training, beside chance."""
    lines = ["hfssl clip: held-out scores (before training -> after; chance)"]
    for key in ("zero_shot_accuracy", "zero_shot_ensemble_accuracy"):
        if f"eval_{key}" in metrics:
            lines.append(
                f"  {key.replace('_', ' ')}: {metrics.get(f'start_{key}', float('nan')):.3f} -> {metrics[f'eval_{key}']:.3f} "
                f"(chance {metrics['eval_zero_shot_chance']:.3f})"
            )
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            key = f"{direction}_recall@{k}"
            if f"eval_{key}" in metrics:
                lines.append(
                    f"  {key.replace('_', ' ')}: {metrics.get(f'start_{key}', float('nan')):.3f} -> {metrics[f'eval_{key}']:.3f} "
                    f"(chance {metrics[f'eval_{key}_chance']:.3f})"
                )
    if at_chance(metrics):
        lines.append(
            "  The alignment stayed at chance (image-to-text recall@10 within 1.5x of chance): the embeddings collapsed "
            "or did not train. Try more steps (--time_budget), a lower --learning_rate, --lock_image with a pretrained "
            "image tower, or a text tower that left its unigram plateau."
        )
    hypothesis = template.replace("{label}", "{}")
    lines.append(
        f"Saved to {output_dir}: pipeline('zero-shot-image-classification', model=...) with hypothesis_template={hypothesis!r}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    script(main)
