"""The Jinja templates of hfssl's model cards (installed as hfssl.model_cards)."""
