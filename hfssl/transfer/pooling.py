"""How a classifier turns the encoder's states into one vector, built into stock transformers classes.

A masked-LM or masked-image pretext never trains a summary token: BERT's [CLS] state and pooler,
and ViT's [CLS] token, are not reached by its loss. With few labels, a head on the mean of the
token states learns far more (WordNet glosses, 10 labels per class, a 2-layer encoder pretrained
by mlm.py: 0.254 on the mean vs 0.198 on [CLS]; Fashion-MNIST MAE linear probe: 0.661 vs 0.570).

The pooling is part of the saved architecture, never a hook, so that `pipeline()` and
`AutoModelFor*.from_pretrained` in a process without hfssl predict exactly what hfssl evaluated:
- ModernBERT (what mlm.py builds from scratch) has `classifier_pooling` ("mean" | "cls") in its config.
- ViT encoders (mim.py outputs, Hub ViT / ViT-MAE) become `BeitForImageClassification`:
  `use_mean_pooling=True` is the layer norm of the patch mean (MAE's own fine-tuning head),
  False the [CLS] state after the final layer norm, exactly ViT's head (see hfssl.models.beit_config).
- Other text classifiers in transformers (BERT, MiniLM, RoBERTa, DistilBERT, ELECTRA, ...) read the
  [CLS] token (through BERT's pooler) and offer no mean pooling. They take `cls` by default, which
  every stock loader reproduces; `mean` wraps the encoder in hfssl's `MeanPooledForSequenceClassification`
  (hfssl.transfer.mean_pooled), saved as custom code under its own model type: plain loading fails
  loudly and `trust_remote_code=True` loads it.
- Convolutional image classifiers average their feature map already and take no pooling option.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POOLINGS", "VIT_FAMILY", "image_pooling", "native_mean_pooling", "text_pooling"]

POOLINGS = ("cls", "mean")
# Image encoders that hfssl classifies as BEiT (a ViT's weights map onto it exactly).
VIT_FAMILY = ("vit", "vit_mae", "beit")


def text_pooling(config: Any, requested: str | None) -> str:
    """The pooling of a text classifier on `config`, set in the config where the class has the option.

    Default: mean where the architecture pools natively (ModernBERT), else cls, the stock classifier; `mean` on
    those is hfssl's custom-code classifier (see `native_mean_pooling`).
    """
    if native_mean_pooling(config):  # ModernBERT
        config.classifier_pooling = requested or "mean"
        return config.classifier_pooling
    return requested or "cls"


def native_mean_pooling(config: Any) -> bool:
    """Whether the architecture's stock sequence classifier can mean-pool (ModernBERT's `classifier_pooling`)."""
    return hasattr(config, "classifier_pooling")


def image_pooling(config: Any, pooling: str | None, from_scratch: bool = False) -> str | None:
    """The pooling of an image classifier: --pooling for ViT-family encoders, None (the model's own) for the rest.

    ViT default: the patch mean for pretrained weights (their [CLS] state was never trained by masked-image
    pretraining), [CLS] from scratch, where it trains with the task (validation: scratch 0.651 on [CLS] vs 0.626
    on the mean; the embedded digits 0.52 vs 0.34). Raises ValueError when --pooling is given for an
    architecture that pools by itself (a CNN averages its feature map).
    """
    if config.model_type in VIT_FAMILY:
        return pooling or ("cls" if from_scratch else "mean")
    if pooling is not None:
        raise ValueError(
            f"--pooling applies to ViT classifiers; a {config.model_type!r} classifier pools its features "
            "itself (convolutional models average their feature map). Drop --pooling."
        )
    return None
