"""Domain adaptation of a sentence encoder by sentence-level denoising (TSDAE, Wang et al. 2021).

    accelerate launch recipes/tsdae.py [config.yaml] --model_name_or_path MODEL --train_file TEXT [--key value ...]

The encoder reads each sentence with 60% of its words deleted and pools it into one vector; a decoder
tied to its weights must rebuild the sentence from that vector alone. Use it instead of recipes/mlm.py
to adapt an already trained sentence encoder (such as all-MiniLM-L6-v2) to your text: masked-token
DAPT trains token predictions and can undo what the contrastive training built (README.md has the
measurement). The output is a plain transformers encoder for recipes/finetune_text.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, set_seed

from hfssl.api import Result, script
from hfssl.args import (RunArguments, SentenceDenoisingArguments, SentenceEncoderArguments, TextDataArguments, default_output_dir,
                        option_values, parse_args)
from hfssl.cards import output_card
from hfssl.data.text import describe_source, load_text_datasets, resolve_text_column
from hfssl.hub import publish
from hfssl.models import check_model_path, load_config, usable_positions
from hfssl.pretext.sentence_denoising import (
    DenoisingCollator, SentenceDenoiser, SentenceDenoisingTrainer, check_decoder_support, drop_blank_rows,
)
from hfssl.training import bf16_supported, hardware_name, parent_lineage, precision_defaults, save_output, start_run

OPTION_TYPES = (TextDataArguments, SentenceEncoderArguments, SentenceDenoisingArguments, RunArguments)
DEFAULTS = dict(
    output_dir=default_output_dir("tsdae"), max_seq_length=64, per_device_train_batch_size=16, per_device_eval_batch_size=64,
    learning_rate=3e-5, weight_decay=0.0, max_steps=300,  # the TSDAE paper's lr; 300 x 16 sentences: ~8 min on 2 CPU cores
    optim="adamw_torch_fused", **precision_defaults(bf16_supported()), eval_strategy="steps", eval_steps=100, logging_steps=20,
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
        raise ValueError("--remove_unused_columns and --dataloader_persistent_workers must stay false for tsdae: the "
                         "collator reads the raw text column, and draws new deletions each epoch in the main process.")
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code,
                                              cache_dir=model_args.cache_dir)
    max_seq_length = usable_positions(config, tokenizer, data_args.max_seq_length)
    raw = load_text_datasets(data_args, seed=run_args.seed)
    text_column = resolve_text_column(raw["train"], data_args.text_column)
    raw = drop_blank_rows(raw, text_column)

    set_seed(run_args.seed)
    model = SentenceDenoiser(model_args.model_name_or_path, max_seq_length, model_args.trust_remote_code, model_args.cache_dir)
    collator = DenoisingCollator(tokenizer, text_column, denoising.deletion_ratio, max_seq_length, seed=run_args.seed)
    trainer = SentenceDenoisingTrainer(model=model, args=run_args, train_dataset=raw["train"], eval_dataset=raw["validation"],
                                       data_collator=collator, processing_class=tokenizer)
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start - trainer.eval_seconds
    metrics = {**train_result.metrics, **trainer.evaluate()}
    sentences = (trainer.state.global_step * run_args.per_device_train_batch_size * run_args.gradient_accumulation_steps
                 * run_args.world_size)
    metrics.update(train_sentences=sentences, train_sentences_per_second=sentences / max(train_seconds, 1e-9),
                   train_steps=trainer.state.global_step)

    record = dict(
        recipe="tsdae",
        lineage=dict(pretext="tsdae", data=describe_source(data_args), base_model=model_args.model_name_or_path,
                     parent=parent_lineage(model_args.model_name_or_path)),
        options=dict(data=option_values(data_args), model=vars(model_args), denoising=vars(denoising), training=run_args.to_dict()),
        metrics=metrics, hardware=hardware_name(), max_seq_length=max_seq_length,
    )
    save_output(trainer, record, card=lambda staging: output_card(record, staging))
    pushed = None
    if trainer.is_world_process_zero():
        print(f"\nhfssl tsdae: {sentences:,} sentences at {metrics['train_sentences_per_second']:,.1f}/s; "
              f"held-out reconstruction loss {metrics['eval_loss']:.3f}\nSaved to {run_args.output_dir}")
        pushed = publish(push, run_args.output_dir)  # a failed push raises after the summary; the output is complete
    return Result("tsdae", Path(run_args.output_dir), metrics, pushed_to=pushed)


if __name__ == "__main__":
    script(main)
