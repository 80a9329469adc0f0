"""A sequence classifier that reads the mean of an encoder's token states, for encoders whose stock classifier cannot.

transformers' BERT-family classifiers (BERT, MiniLM, RoBERTa, DistilBERT, ELECTRA, ...) read the [CLS]
token only, and their maintainers declined mean pooling there (transformers issue 16651). For a
sentence encoder such as all-MiniLM-L6-v2, trained on the mean, [CLS] transfers far worse (WordNet
glosses, 10 labels per class, LP-FT on validation: 0.389 on [CLS] vs 0.544 on the mean).

hfssl saves this class as custom code: every output that uses it carries this file, and its
config.json names it in `auto_map` under its own `model_type`. Loading it needs
`trust_remote_code=True`; without it transformers refuses to load the model (a loud error), so no
stock class can silently pool [CLS] instead. This file is self-contained (torch and transformers
only), because it is executed from the model's repo, where hfssl is not installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["MeanPooledConfig", "MeanPooledForSequenceClassification"]


class MeanPooledConfig(PretrainedConfig):
    """The wrapped encoder's config (`encoder`, any transformers encoder) plus the classifier's labels and dropout."""

    model_type = "hfssl_mean_pooled"
    sub_configs = {"encoder": AutoConfig}

    def __init__(self, encoder: PretrainedConfig | dict | None = None, classifier_dropout: float = 0.0, **kwargs: Any) -> None:
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)


class MeanPooledForSequenceClassification(PreTrainedModel):
    """logits = classifier(dropout(mean of the encoder's last hidden states over non-padding tokens))."""

    config_class = MeanPooledConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True

    def __init__(self, config: MeanPooledConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = AutoModel.from_config(config.encoder)
        if getattr(self.encoder, "pooler", None) is not None:  # BERT's [CLS] pooler: not read here, so not kept
            self.encoder.pooler = None
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.encoder.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.classifier:
            module.weight.data.normal_(0.0, getattr(self.config.encoder, "initializer_range", 0.02))
            module.bias.data.zero_()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state  # (batch, seq, hidden)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


MeanPooledConfig.register_for_auto_class()
MeanPooledForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
