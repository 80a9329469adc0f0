"""Masked-patch pretraining of a ViT (MAE or SimMIM), from scratch or continued from a ViT / ViT-MAE checkpoint.

    accelerate launch recipes/mim.py [config.yaml] [--method mae|simmim] [--key value ...]

With no arguments: a tiny ViT pretrained with MAE on the embedded handwritten digits
(scikit-learn's 1,797 8x8 images, resized to the tiny preset's 16x16), about two minutes on a laptop CPU; the
summary shows the kNN accuracy of its features before and after pretraining.
"""

from __future__ import annotations

from typing import Any

from transformers import set_seed

from hfssl.api import Result, script
from hfssl.args import (
    ImageDataArguments,
    PatchMaskingArguments,
    PretrainingRunArguments,
    ProbeArguments,
    VisionModelArguments,
    default_output_dir,
    parse_args,
)
from hfssl.data.images import (
    DecodingCollator,
    ImageBatchCollator,
    data_channels,
    decode_images,
    image_processor,
    load_image_sources,
    load_image_stream,
)
from hfssl.errors import OptionError
from hfssl.metrics.probes import ProbeCallback
from hfssl.models import build_masked_image_model, masked_image_config, pooled_encoder, use_fast_attention
from hfssl.pretext.masked_patches import MaskedImageTrainer, mask_inputs, masked_image_summary, save_reconstruction_grid
from hfssl.runs import finish_run, pretext_lineage, run_record, start_run
from hfssl.runtime import bf16_supported, precision_defaults
from hfssl.sharding import unsharded

OPTION_TYPES = (ImageDataArguments, VisionModelArguments, PatchMaskingArguments, ProbeArguments, PretrainingRunArguments)
DEFAULTS = dict(
    output_dir=default_output_dir("mim"),
    per_device_train_batch_size=128,
    per_device_eval_batch_size=256,
    learning_rate=1e-3,  # MAE's 1.5e-4 x batch/256 rule is tuned for ViT-B; a 4-layer ViT wants more
    weight_decay=0.05,
    adam_beta2=0.95,  # as MAE and SimMIM: steadier under large, noisy reconstruction gradients
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    max_steps=600,
    optim="adamw_torch_fused",  # one fused kernel for the whole update (CPU and CUDA)
    # bf16 autocast where the hardware has bf16 units (AVX-512 BF16/AMX CPUs, recent GPUs), unless accelerate was told otherwise
    **precision_defaults(bf16_supported()),
    eval_strategy="steps",
    eval_steps=200,
    logging_steps=20,
    save_steps=200,
    save_total_limit=2,
    report_to="none",
    # Every parameter takes part in every step, so DDP need not search the autograd graph for unused ones (the
    # Trainer's default does, at every step, and warns that it found none).
    ddp_find_unused_parameters=False,
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("mim", dataset=..., **options)`)."""
    data_args, model_args, masking, probe_args, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    if run_args.token_budget:
        raise OptionError("--token_budget counts text tokens (mlm.py); mim.py sizes a run with --time_budget or --max_steps.")
    resume, push = start_run(run_args)  # logging, output-dir checks; --push_to_hub pushes the finished directory once

    # Everything that can be wrong with the options or the images fails here, before training.
    config = masked_image_config(model_args, masking)
    if data_args.streaming:  # training images decoded per batch; the held-out ones and the probes' sample cached
        splits = load_image_stream(data_args, run_args.seed, probe_args.probe_samples)
        sources = (splits.probe_train or splits.validation, splits.validation)
    else:
        splits = load_image_sources(data_args, seed=run_args.seed)
        sources = (splits.train, splits.validation)
    if model_args.model_name_or_path is None:  # from scratch: grayscale or RGB as the data is, unless told
        config.num_channels = model_args.num_channels or data_channels(sources[0], data_args.skip_corrupt_images)
    processor = image_processor(model_args.model_name_or_path, config, model_args.cache_dir)
    train, held_out = (
        decode_images(s, processor, config.num_channels, data_args.skip_corrupt_images, data_args.image_cache_dir)
        for s in sources
    )  # streamed: `train` is the probes' sample (or, unlabeled, the held-out images again, from the cache)
    set_seed(run_args.seed)  # model initialisation, augmentation and masks all follow --seed
    model = build_masked_image_model(
        config, model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, cache_dir=model_args.cache_dir
    )
    use_fast_attention(model, run_args.device)  # SDPA on GPUs; matmul attention on CPU, where SDPA's backward is slow

    mean, std = processor.image_mean, processor.image_std
    collator = ImageBatchCollator(mean, std, mask_inputs(config, masking), data_args.crop_min_scale, data_args.horizontal_flip)
    probe = ProbeCallback.for_images(
        pooled_encoder, train, held_out, mean, std, probe_args.knn_k, probe_args.probe_samples, run_args.seed
    )
    if data_args.streaming:
        collator = DecodingCollator(collator, processor, config.num_channels, data_args.skip_corrupt_images)
        run_args.accelerator_config.dispatch_batches = False  # each process reads its own part of the stream
        run_args.remove_unused_columns = False  # the encoded "image" column is the collator's input, not the model's
    trainer = MaskedImageTrainer(
        model=model,
        args=run_args,
        train_dataset=splits.train if data_args.streaming else train,
        eval_dataset=held_out,
        data_collator=collator,
        processing_class=processor,
        callbacks=[probe] if probe is not None else None,
    )
    start_scores = {f"start_{k}": v for k, v in probe.score(trainer.model, run_args.bf16).items()} if probe and not resume else {}
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate(), **start_scores}
    images = trainer.train_images * run_args.world_size
    metrics.update(
        train_images=images,
        train_images_per_second=images / max(trainer.train_seconds, 1e-9),
        train_steps=trainer.state.global_step,
    )

    skipped = len(held_out.skipped) + (len(train.skipped) if sources[0] is not sources[1] else 0)
    record = run_record(
        "mim",
        pretext_lineage(masking.method, splits.description, model_args.model_name_or_path),
        dict(data=data_args, model=model_args, masking=masking, probe=probe_args, training=run_args),
        metrics,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        skipped_images=skipped,
    )
    shown = collator.for_evaluation(run_args.seed)([held_out[i] for i in range(min(8, len(held_out)))])
    pictured = unsharded(trainer.model)  # the main process draws the picture; under FSDP every process gathers for it
    return finish_run(
        trainer,
        record,
        push,
        lambda: masked_image_summary(masking.method, metrics, skipped, run_args.output_dir),
        extra=lambda staging: save_reconstruction_grid(
            pictured,
            shown,
            mean,
            std,
            staging / "reconstructions.png",
            f"{masking.method}: original | masked | reconstruction",
        ),
    )


if __name__ == "__main__":
    script(main)
