"""Transfer a pretrained image encoder to a labeled task (image classification).

    accelerate launch recipes/finetune_image.py [config.yaml] [--model_name_or_path PATH] [--strategy lora] [--key value ...]

--model_name_or_path: the output of mim.py, or any ViT / CNN (ResNet, ConvNeXt, ...) Hub id or local
checkpoint that AutoModelForImageClassification loads; --from_scratch true keeps its architecture
and image processor with random weights. With no model option, a tiny ViT is trained from random
weights (--model_preset): the control arm, since no pretrained ViT ships with hfssl.
With no data option: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): about 97%
accuracy in three to seven minutes on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from hfssl.api import Result, script
from hfssl.args import (
    ClassifierModelArguments,
    ImageClassificationDataArguments,
    ImageClassifierArguments,
    RunArguments,
    TransferArguments,
    default_output_dir,
    option_values,
    parse_args,
)
from hfssl.data.classification import LabeledImageCollator, LabeledImages, load_image_classification
from hfssl.data.images import ImageBatchCollator, decode_images
from hfssl.metrics.baselines import image_baseline
from hfssl.runs import finish_run, start_run
from hfssl.runtime import bf16_supported, precision_defaults
from hfssl.transfer.defaults import apply_transfer_defaults, starting_point
from hfssl.transfer.models import image_classifier_config, load_classifier, load_image_processor
from hfssl.transfer.run import TransferSetup, run_transfer, summary_text, transfer_files, transfer_record

OPTION_TYPES = (
    ImageClassificationDataArguments,
    ClassifierModelArguments,
    ImageClassifierArguments,
    TransferArguments,
    RunArguments,
)
DEFAULTS = dict(
    output_dir=default_output_dir("finetune_image"),
    per_device_train_batch_size=64,
    per_device_eval_batch_size=256,
    # learning rate follows the model and the strategy (hfssl.transfer.defaults, applied where not set, and logged)
    weight_decay=0.05,
    warmup_steps=0.1,
    lr_scheduler_type="cosine",
    num_train_epochs=10,
    eval_strategy="epoch",
    save_strategy="no",  # runs of minutes: no optimizer-state checkpoints (pass --save_strategy epoch to resume)
    logging_steps=10,
    crop_min_scale=0.8,  # mild: a crop that loses a stroke can turn one digit into another
    **precision_defaults(torch.cuda.is_available() and bf16_supported()),  # on a CPU, bf16 autocast made the tiny ViT 5x slower
    report_to="none",
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("finetune_image", dataset=..., **options)`)."""
    data_args, model_args, classifier, transfer, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    resume, push = start_run(run_args)  # logging, output-dir checks; --push_to_hub pushes the finished directory once

    # Everything that can be wrong with the options or the images fails here, before training.
    splits = load_image_classification(data_args, seed=run_args.seed)
    config, pooling = image_classifier_config(model_args, splits.class_names, classifier.pooling)
    processor = load_image_processor(model_args.model_name_or_path, config, model_args.cache_dir)
    # Classifiers read RGB, as pipeline() feeds them (grayscale encoders are adapted when loaded).
    train, held_out = (
        decode_images(s, processor, 3, data_args.skip_corrupt_images, data_args.image_cache_dir)
        for s in (splits.train, splits.validation)
    )

    def classifier(scratch: bool):  # noqa: ANN202
        return load_classifier(
            "image",
            model_args.model_name_or_path,
            splits.class_names,
            scratch,
            config=config,
            trust_remote_code=model_args.trust_remote_code,
            cache_dir=model_args.cache_dir,
        )

    random_start = model_args.from_scratch or not model_args.model_name_or_path  # already the control arm
    # learning rate and length follow the starting model and the labeled set's size, where not set
    chosen = apply_transfer_defaults(
        "image",
        starting_point(model_args.model_name_or_path, random_start),
        getattr(config, "hidden_size", None),
        transfer,
        run_args,
        len(train.labels),
    )
    setup = TransferSetup(
        build=lambda: classifier(model_args.from_scratch),
        build_scratch=None if random_start else (lambda: classifier(True)),  # --controls scratch
        train_dataset=LabeledImages(train),
        eval_dataset=LabeledImages(held_out),
        collator=LabeledImageCollator(
            ImageBatchCollator(
                processor.image_mean, processor.image_std, None, data_args.crop_min_scale, data_args.horizontal_flip
            )
        ),
        processing_class=processor,
        label_names=splits.class_names,
        train_labels=train.labels.numpy(),
        eval_labels=held_out.labels.numpy(),
        baseline=lambda: image_baseline(train.read(), train.labels.numpy(), held_out.read(), held_out.labels.numpy()),
        scratch_learning_rate=chosen.scratch_learning_rate,
    )
    result = run_transfer(setup, transfer, run_args, resume)

    skipped = len(train.skipped) + len(held_out.skipped)
    options = dict(
        data=option_values(data_args),
        model={**vars(model_args), "pooling": pooling},
        transfer=vars(transfer),
        training=run_args.to_dict(),
        image_size=getattr(config, "image_size", None),
        skipped_images=skipped,
    )
    architecture = model_args.model_name_or_path or f"hfssl ViT preset {model_args.model_preset or 'tiny'}"
    record = transfer_record(
        "finetune_image",
        result,
        splits.description,
        architecture,
        model_args.from_scratch or not model_args.model_name_or_path,
        options,
        splits.class_names,
    )
    return finish_run(
        result.trainer,
        record,
        push,
        lambda: (
            summary_text("finetune_image", result, run_args.output_dir)
            + (f"\n  {skipped} unreadable images skipped" if skipped else "")
        ),
        extra=transfer_files(result, setup, transfer, record),
        log_history=result.log_history,
        fit=result,
    )


if __name__ == "__main__":
    script(main)
