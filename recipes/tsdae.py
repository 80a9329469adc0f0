"""Domain adaptation of a sentence encoder by sentence-level denoising (TSDAE, Wang et al. 2021).

    accelerate launch recipes/tsdae.py [config.yaml] --model_name_or_path MODEL --train_file TEXT [--key value ...]

The encoder reads each sentence with 60% of its words deleted and pools it into one vector; a decoder
tied to its weights must rebuild the sentence from that vector alone. It adapts an already trained
sentence encoder (such as all-MiniLM-L6-v2) to your text without training token predictions. On the
benchmark in docs/benchmarks.md, masked-token DAPT with recipes/mlm.py transferred better than TSDAE,
which fell slightly below the unadapted encoder: measure both on your validation split. The output is a
plain transformers encoder for recipes/finetune_text.py.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, set_seed

from hfssl.api import Result, script
from hfssl.args import (
    RunArguments,
    SentenceDenoisingArguments,
    SentenceEncoderArguments,
    TextDataArguments,
    default_output_dir,
    parse_args,
)
from hfssl.data.text import describe_source, load_text_datasets, resolve_text_column
from hfssl.models import check_model_path, load_config, usable_positions
from hfssl.pretext.sentence_denoising import (
    DenoisingCollator,
    SentenceDenoiser,
    SentenceDenoisingTrainer,
    check_decoder_support,
    drop_blank_rows,
)
from hfssl.runs import finish_run, pretext_lineage, run_record, start_run
from hfssl.runtime import bf16_supported, precision_defaults

OPTION_TYPES = (TextDataArguments, SentenceEncoderArguments, SentenceDenoisingArguments, RunArguments)
DEFAULTS = dict(
    output_dir=default_output_dir("tsdae"),
    max_seq_length=64,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=64,
    learning_rate=3e-5,
    weight_decay=0.0,
    max_steps=300,  # the TSDAE paper's lr; 300 x 16 sentences: ~8 min on 2 CPU cores
    optim="adamw_torch_fused",
    **precision_defaults(bf16_supported()),
    eval_strategy="steps",
    eval_steps=100,
    logging_steps=20,
    save_strategy="no",  # runs of minutes; pass --save_strategy steps to keep resumable checkpoints
    remove_unused_columns=False,  # the collator reads the raw text column
    report_to="none",
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("tsdae", dataset=..., **options)`)."""
    data_args, model_args, denoising, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    resume, push = start_run(run_args)  # logging, output-dir checks; --push_to_hub pushes the finished directory once

    # Everything that can be wrong with the options or the data fails here, before the model is built.
    check_model_path(model_args.model_name_or_path)
    config = load_config(model_args.model_name_or_path, model_args.trust_remote_code, model_args.cache_dir)
    check_decoder_support(config)
    if run_args.remove_unused_columns or run_args.dataloader_persistent_workers:
        raise ValueError(
            "--remove_unused_columns and --dataloader_persistent_workers must stay false for tsdae: the "
            "collator reads the raw text column, and draws new deletions each epoch in the main process."
        )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, cache_dir=model_args.cache_dir
    )
    max_seq_length = usable_positions(config, tokenizer, data_args.max_seq_length)
    raw = load_text_datasets(data_args, seed=run_args.seed)
    text_column = resolve_text_column(raw["train"], data_args.text_column)
    raw = drop_blank_rows(raw, text_column)

    set_seed(run_args.seed)
    model = SentenceDenoiser(model_args.model_name_or_path, max_seq_length, model_args.trust_remote_code, model_args.cache_dir)
    collator = DenoisingCollator(tokenizer, text_column, denoising.deletion_ratio, max_seq_length, seed=run_args.seed)
    trainer = SentenceDenoisingTrainer(
        model=model,
        args=run_args,
        train_dataset=raw["train"],
        eval_dataset=raw["validation"],
        data_collator=collator,
        processing_class=tokenizer,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate()}
    sentences = (
        trainer.state.global_step
        * run_args.per_device_train_batch_size
        * run_args.gradient_accumulation_steps
        * run_args.world_size
    )
    metrics.update(
        train_sentences=sentences,
        train_sentences_per_second=sentences / max(trainer.train_seconds, 1e-9),
        train_steps=trainer.state.global_step,
    )

    record = run_record(
        "tsdae",
        pretext_lineage("tsdae", describe_source(data_args), model_args.model_name_or_path),
        dict(data=data_args, model=model_args, denoising=denoising, training=run_args),
        metrics,
        max_seq_length=max_seq_length,
    )
    return finish_run(
        trainer,
        record,
        push,
        lambda: (
            f"hfssl tsdae: {sentences:,} sentences at {metrics['train_sentences_per_second']:,.1f}/s; "
            f"held-out reconstruction loss {metrics['eval_loss']:.3f}\nSaved to {run_args.output_dir}"
        ),
    )


if __name__ == "__main__":
    script(main)
