"""Masked-token (BERT-style) pretraining, from scratch or continued from any BERT-like checkpoint.

    accelerate launch recipes/mlm.py [config.yaml] [--key value ...]
    accelerate launch recipes/mlm.py --objective electra   # replaced-token detection (ELECTRA) instead

With no arguments: a ModernBERT and a WordPiece tokenizer trained on the embedded corpus (docstrings of the
Python standard library) for the default budget, 10 minutes (--time_budget 10m: a coffee break on a laptop CPU).
The model's size follows the budget (hfssl.sizing): on a laptop CPU, the tiny preset. `make demo` gives it
2 minutes, enough to leave the unigram plateau.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import set_seed

from hfssl.api import Result, script
from hfssl.args import (
    MaskingArguments,
    PretrainingRunArguments,
    TextDataArguments,
    TextModelArguments,
    default_output_dir,
    parse_args,
)
from hfssl.budget import broadcast_from_main, parse_count, parse_duration, steps_for_tokens
from hfssl.data.text import describe_source, estimate_tokens, load_text_datasets, resolve_text_column, tokenize_and_pack
from hfssl.errors import OptionError
from hfssl.models import (
    TEXT_PRESETS,
    build_electra_models,
    build_masked_lm,
    check_electra_support,
    fit_vocabulary,
    mlm_config,
    set_dropout,
    usable_positions,
    use_fast_attention,
)
from hfssl.options import fill_unset, given
from hfssl.pretext.masked_tokens import (
    FRESH_HEAD_LR,
    MODEL_DEFAULTS,
    MaskedLMTrainer,
    PlateauWatch,
    build_masker,
    fill_mask_examples,
    head_parameters,
    masked_lm_metrics,
    plateau_report,
    plateau_sentence,
    unigram_loss,
)
from hfssl.pretext.replaced_tokens import ELECTRA_DEFAULTS, ReplacedTokenDetection, ReplacedTokenTrainer, replaced_token_metrics
from hfssl.runs import finish_run, pretext_lineage, run_record, start_run
from hfssl.runtime import bf16_supported, precision_defaults
from hfssl.sizing import MAX_EPOCHS, TOKENS_PER_PARAMETER, choose_size, measure_tokens_per_second
from hfssl.tokenizer import check_mask_token, resolve_tokenizer

logger = logging.getLogger("hfssl.recipes.mlm")

OPTION_TYPES = (TextDataArguments, TextModelArguments, MaskingArguments, PretrainingRunArguments)
DEFAULTS = dict(
    output_dir=default_output_dir("mlm"),
    # Learning rate, masking and batch size follow the model: a small encoder from scratch or a trained checkpoint
    # (hfssl.pretext.masked_tokens.MODEL_DEFAULTS, applied where not set; the log says which).
    time_budget="10m",  # a coffee break on a laptop CPU: about 3,000 steps of the tiny preset on 2 cores
    max_steps=3000,  # without a budget (--time_budget none): the validated length for the tiny preset
    max_seq_length=64,  # short blocks: more steps per second, and few-label tasks classify sentences
    per_device_eval_batch_size=128,
    warmup_steps=0.06,
    weight_decay=0.01,
    optim="adamw_torch_fused",  # one fused kernel for the whole update (CPU and CUDA)
    # bf16 autocast where the hardware has bf16 units (AVX-512 BF16/AMX CPUs, recent GPUs), unless accelerate was told otherwise
    **precision_defaults(bf16_supported()),
    eval_strategy="steps",
    eval_steps=500,
    logging_steps=50,
    save_steps=500,
    save_total_limit=2,
    report_to="none",
    # Every parameter takes part in every step, so DDP need not search the autograd graph for unused ones (the
    # Trainer's default does, at every step, and warns that it found none).
    ddp_find_unused_parameters=False,
    include_num_input_tokens_seen="non_padding",
)


def main(argv: list[str] | None = None, *, dataset: Any = None, **options: Any) -> Result:
    """Run from the command line (`argv`) or from Python (`hfssl.run("mlm", dataset=..., **options)`)."""
    data_args, model_args, masking, run_args = parse_args(OPTION_TYPES, argv, DEFAULTS, options, dataset)
    start = "checkpoint" if model_args.model_name_or_path else "scratch"
    electra = masking.objective == "electra"
    chosen = fill_unset({**MODEL_DEFAULTS[start], **(ELECTRA_DEFAULTS[start] if electra else {})}, run_args, masking, model_args)
    if run_args.token_budget:
        if "time_budget" in given(run_args) and run_args.time_budget:
            raise OptionError("--token_budget and --time_budget both size the run: give one of them.")
        run_args.time_budget = None  # the token count sets the length (after the block length is known, below)
    resume, push = start_run(run_args)  # logging, output-dir checks; --push_to_hub pushes the finished directory once
    if chosen:
        logger.info(
            "Defaults for %s%s: %s (set any of them to override)",
            "continued pretraining of a checkpoint" if start == "checkpoint" else "an encoder trained from scratch",
            " with ELECTRA" if electra else "",
            ", ".join(f"--{k} {v}" for k, v in chosen.items()),
        )

    # Everything that can be wrong with the options fails here, before tokenizing or training.
    config = mlm_config(
        model_args.model_name_or_path,
        model_args.model_preset,
        model_args.config_overrides,
        model_args.trust_remote_code,
        model_args.cache_dir,
        model_args.architecture,
    )
    if electra:
        check_electra_support(config)
    raw = load_text_datasets(data_args, seed=run_args.seed)
    text_column = resolve_text_column(raw["train"], data_args.text_column)
    tokenizer = resolve_tokenizer(model_args, raw["train"], text_column, resume)
    check_mask_token(tokenizer, model_args.tokenizer_name or model_args.model_name_or_path or "--train_tokenizer")
    max_seq_length = usable_positions(config, tokenizer, data_args.max_seq_length)
    if run_args.token_budget:
        per_step = max_seq_length * run_args.train_batch_size * run_args.gradient_accumulation_steps * max(run_args.world_size, 1)
        steps = steps_for_tokens(parse_count(run_args.token_budget), per_step)
        run_args.max_steps = min(steps, run_args.max_steps) if "max_steps" in given(run_args) else steps
        logger.info("--token_budget %s: %d steps of %s tokens", run_args.token_budget, run_args.max_steps, f"{per_step:,}")

    if sized_from_budget(model_args, run_args, electra):
        config = size_model(config, model_args, run_args, masking, raw["train"], tokenizer, text_column, max_seq_length)

    set_seed(run_args.seed)  # model initialisation, masks and dropout all follow --seed
    source = (config, tokenizer, model_args.model_name_or_path, model_args.trust_remote_code, model_args.cache_dir)
    model = ReplacedTokenDetection(*build_electra_models(*source)) if electra else build_masked_lm(*source)
    set_dropout(model, model_args.pretraining_dropout)
    use_fast_attention(model, run_args.device)  # SDPA on GPUs; matmul attention on CPU, where SDPA's backward is slow
    if run_args.deepspeed and "head_learning_rate" not in given(model_args):
        model_args.head_learning_rate = None  # DeepSpeed may build the optimizer itself: no parameter groups of ours
    elif getattr(model, "hfssl_fresh_weights", None) and "head_learning_rate" not in given(model_args):
        # a checkpoint without an MLM head (a sentence encoder): the fresh head learns at its own, larger rate while
        # the encoder keeps the checkpoint's small one (all-MiniLM-L6-v2 on WordNet, validation: LP-FT after DAPT
        # 0.552 with the head at 2e-5, 0.562 at 1e-3; plain MiniLM 0.544)
        model_args.head_learning_rate = FRESH_HEAD_LR
        logger.info("The masked-LM head is fresh: --head_learning_rate %g (set it to override)", FRESH_HEAD_LR)
    if model_args.head_learning_rate is not None:
        head_parameters(model)  # a model without a separate head fails here, before tokenizing
    blocks = tokenize_and_pack(  # each process tokenizes its share, once, and reads the others' from the cache
        raw,
        tokenizer,
        text_column,
        max_seq_length,
        data_args.line_by_line,
        masking.whole_word_mask,
        data_args.preprocessing_num_workers,
        data_args.overwrite_cache,
        rank=run_args.process_index,
        world_size=run_args.world_size,
    )

    # The loss of a model that knows only token frequencies: where pretraining starts, and must leave.
    unigram = unigram_loss(blocks["train"], len(tokenizer), tokenizer.all_special_ids)
    if unigram is not None:
        logger.info("Unigram plateau of this corpus: MLM loss %.3f (a model that knows only token frequencies)", unigram)
    trainer = (ReplacedTokenTrainer if electra else MaskedLMTrainer)(
        model=model,
        args=run_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks["validation"],
        masker=build_masker(tokenizer, masking, seed=run_args.seed),
        processing_class=tokenizer,
        compute_metrics=replaced_token_metrics if electra else masked_lm_metrics,
        sparse=model_args.sparse_head,
        head_learning_rate=model_args.head_learning_rate,
        callbacks=[PlateauWatch(unigram)] if unigram is not None else None,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate()}
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics.update(
        train_tokens=tokens,
        train_tokens_per_second=tokens / max(trainer.train_seconds, 1e-9),
        train_steps=trainer.state.global_step,
    )
    metrics.update(plateau_report(metrics.get("eval_mlm_loss"), unigram))
    plateau = plateau_sentence(metrics, " of the generator" if electra else "")
    if plateau and not metrics["left_unigram_plateau"]:
        logger.warning("Pretraining %s.", plateau)

    record = run_record(
        "mlm",
        pretext_lineage("electra" if electra else "masked-lm", describe_source(data_args), model_args.model_name_or_path),
        dict(data=data_args, model=model_args, masking=masking, training=run_args),
        metrics,
        max_seq_length=max_seq_length,
        **(model.record_facts() if electra else {}),
    )

    def summary() -> str:
        seen = f"{tokens:,} tokens seen at {metrics['train_tokens_per_second']:,.0f} tokens/s"
        if electra:
            lines = [
                f"hfssl mlm (ELECTRA): {seen}; replaced-token accuracy {metrics['eval_rtd_accuracy']:.3f} "
                f"({metrics['eval_replaced_fraction']:.1%} of tokens replaced), generator's eval MLM loss "
                f"{metrics['eval_mlm_loss']:.3f}",
                *([f"  Pretraining {plateau}."] if plateau else []),
                f"Saved the discriminator to {run_args.output_dir} (AutoModel / AutoModelForSequenceClassification)",
            ]
            return "\n".join(lines)
        lines = [
            f"hfssl mlm: {seen}; eval loss {metrics['eval_mlm_loss']:.3f}, perplexity {metrics['eval_perplexity']:.1f}, "
            f"masked-token accuracy {metrics['eval_masked_accuracy']:.3f}",
            *([f"  Pretraining {plateau}."] if plateau else []),
            f"Saved to {run_args.output_dir}",
        ]
        for text, predictions in fill_mask_examples(run_args.output_dir, raw["validation"], text_column):
            lines += [f"  {text}", f"    -> {predictions}"]
        return "\n".join(lines)

    return finish_run(trainer, record, push, summary)


def sized_from_budget(model_args: Any, run_args: Any, electra: bool) -> bool:
    """A from-scratch MLM encoder whose size the user left open, trained to a time or token budget."""
    open_size = model_args.model_name_or_path is None and "model_preset" not in given(model_args)
    return open_size and not model_args.config_overrides and not electra and bool(run_args.time_budget or run_args.token_budget)


def size_model(
    config: Any, model_args: Any, run_args: Any, masking: Any, train: Any, tokenizer: Any, text_column: str, seq_len: int
) -> Any:
    """The config of the largest preset the budget trains well (hfssl.sizing); the choice goes in the log and, as
    --model_preset, in hfssl.json and the card."""
    per_step = seq_len * run_args.train_batch_size * run_args.gradient_accumulation_steps * max(run_args.world_size, 1)
    candidates = []
    for name in TEXT_PRESETS:
        candidate = mlm_config(None, name, None, architecture=model_args.architecture)
        fit_vocabulary(candidate, tokenizer)
        candidates.append((name, candidate))
    sizing = choose_size(
        candidates,
        seconds=parse_duration(run_args.time_budget) if run_args.time_budget else None,
        tokens=run_args.max_steps * per_step if run_args.max_steps < 10**9 else None,
        corpus_tokens=estimate_tokens(train, tokenizer, text_column),
        seq_len=seq_len,
        vocab_size=len(tokenizer),
        mask_rate=masking.mlm_probability,
        measure=lambda c: (
            max(run_args.world_size, 1)
            * measure_tokens_per_second(
                c,
                batch_size=run_args.per_device_train_batch_size,
                seq_len=seq_len,
                mask_rate=masking.mlm_probability,
                device=run_args.device,
                bf16=run_args.bf16,
            )
        ),
    )
    names = list(TEXT_PRESETS)
    model_args.model_preset = names[broadcast_from_main(names.index(sizing.preset))]  # every process builds the same
    logger.info(
        "Model size from the budget: --model_preset %s, the largest preset it trains to %d tokens per parameter "
        "within %d passes over the corpus (%s; set --model_preset to override)",
        model_args.model_preset,
        TOKENS_PER_PARAMETER,
        MAX_EPOCHS,
        sizing.describe(),
    )
    return dict(candidates)[model_args.model_preset]


if __name__ == "__main__":
    script(main)
