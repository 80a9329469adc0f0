from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, ViTConfig, ViTForMaskedImageModeling, ViTMAEForPreTraining, ViTModel

from hfssl.args import PatchMaskingArguments, VisionModelArguments
from hfssl.models import build_masked_image_model, masked_image_config, pooled_encoder, rgb_input, use_fast_attention
from hfssl.pretext.masked_patches import block_mask, mask_inputs, random_mask, reconstruct

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


def tiny_model(method: str, image_size: int = 16, patch_size: int = 4, **masking):
    """A from-scratch 2-layer model for `method`, and its masking options."""
    args = PatchMaskingArguments(method=method, **masking)
    config = masked_image_config(VisionModelArguments(image_size=image_size, patch_size=patch_size, num_channels=1), args)
    config.update(SMALL)
    if method == "mae":
        config.update(
            dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)
        )
    torch.manual_seed(0)
    return build_masked_image_model(config), args


@pytest.mark.parametrize("grid, ratio, unit", [(4, 0.6, 1), (8, 0.6, 2), (8, 0.4, 4), (6, 0.75, 3)])
@pytest.mark.parametrize("draw", [random_mask, block_mask])
def test_masks_hide_exactly_the_ratio_in_whole_units(draw, grid, ratio, unit):
    masks = draw(64, grid, ratio, unit, torch.Generator().manual_seed(0))
    side = grid // unit
    count = math.ceil(side * side * ratio)
    assert masks.shape == (64, grid * grid) and masks.dtype == torch.bool
    assert (masks.sum(1) == count * unit * unit).all()
    units = masks.view(64, side, unit, side, unit)
    assert (units.all(dim=(2, 4)) == units.any(dim=(2, 4))).all()  # every unit is masked whole or not at all
    assert len({tuple(m.tolist()) for m in masks}) >= min(20, math.comb(side * side, count))  # masks differ between images


def test_block_masks_are_blockier_than_random_masks():
    """Block masks put masked patches next to masked patches more often than independent draws do."""

    def neighbours(masks: torch.Tensor) -> float:
        grid = masks.view(-1, 14, 14).float()
        return float((grid[:, :, 1:] * grid[:, :, :-1]).sum() / grid[:, :, 1:].sum())

    g = torch.Generator().manual_seed(0)
    assert neighbours(block_mask(32, 14, 0.4, 1, g)) > neighbours(random_mask(32, 14, 0.4, 1, g)) + 0.15


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_mae_encoder_processes_only_the_visible_patches(ratio):
    model, masking = tiny_model("mae", mask_ratio=ratio)
    seen = []
    model.vit.layers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    batch = {"pixel_values": torch.randn(3, 1, 16, 16), **mask_inputs(model.config, masking)(3, None)}
    out = model(**batch)
    patches = 16
    assert seen == [1 + int(patches * (1 - ratio))]  # CLS + visible patches only
    assert (out.mask.sum(1) == patches - int(patches * (1 - ratio))).all()


@pytest.mark.parametrize("method, masking", [("simmim", dict(mask_patch_size=8)), ("mae", dict(norm_pix_loss=True))])
def test_reconstruction_keeps_visible_pixels_and_predicts_masked_ones(method, masking):
    model, args = tiny_model(method, **masking)
    batch = {"pixel_values": torch.randn(2, 1, 16, 16), **mask_inputs(model.config, args)(2, torch.Generator().manual_seed(0))}
    pixel_mask, recon = reconstruct(model, batch)
    masked_fraction = 0.75 if method == "simmim" else 12 / 16  # 3 of 4 8x8 units; MAE: 16 - int(16 * 0.25) patches
    assert pixel_mask.shape == (2, 1, 16, 16) and pixel_mask.float().mean() == masked_fraction
    visible = ~pixel_mask.expand_as(recon)
    assert torch.equal(recon[visible], batch["pixel_values"][visible])
    assert not torch.allclose(recon[~visible], batch["pixel_values"][~visible])


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_cpu_attention_switch_reaches_every_layer_and_keeps_the_loss(method):
    """ViT-MAE's decoder keeps a private config copy; the switch must reach it, and the loss must not change."""
    model, masking = tiny_model(method)
    batch = {"pixel_values": torch.randn(4, 1, 16, 16), **mask_inputs(model.config, masking)(4, torch.Generator().manual_seed(0))}
    model.eval()  # the masks (MAE: its shuffle noise) come from the seeded batch, the same for both passes
    sdpa_loss = model(**batch).loss
    assert use_fast_attention(model, "cpu") == "eager"
    implementations = {
        m.config._attn_implementation for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")
    }
    assert implementations == {"eager"}
    torch.testing.assert_close(model(**batch).loss, sdpa_loss, rtol=1e-5, atol=1e-6)
    assert use_fast_attention(model, "cuda") == "eager"  # the switch is CPU-only: a model already switched is left as it is


def test_mae_from_scratch_has_sin_cos_positions():
    """transformers 5 leaves them all zero; hfssl restores MAE's own initialisation."""
    model, _ = tiny_model("mae")
    assert model.vit.embeddings.position_embeddings[0, 1:].std() > 0.1
    assert model.decoder.decoder_pos_embed[0, 1:].std() > 0.1


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_the_exported_encoder_is_a_stock_beit_whose_pooler_is_the_layer_normed_patch_mean(tmp_path, method):
    model, _ = tiny_model(method)
    rgb_input(pooled_encoder(model)).save_pretrained(tmp_path)  # as MaskedImageTrainer.save_model writes it
    encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(encoder).__name__ == "BeitModel" and encoder.config.num_channels == 3
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]  # no random pooler
    gray = torch.randn(2, 1, 16, 16)
    with torch.no_grad():  # the unmasked pretraining encoder, by hand: final norm of the patch mean
        vit = ViTModel(
            ViTConfig(
                **{
                    k: getattr(model.config, k)
                    for k in (
                        "hidden_size",
                        "num_hidden_layers",
                        "num_attention_heads",
                        "intermediate_size",
                        "image_size",
                        "patch_size",
                        "num_channels",
                        "layer_norm_eps",
                    )
                }
            ),
            add_pooling_layer=False,
        ).eval()
        vit.load_state_dict({k: v for k, v in model.vit.state_dict().items() if k != "embeddings.mask_token"})
        hidden = vit(pixel_values=gray, output_hidden_states=True).hidden_states[-1]
        expected = vit.layernorm(hidden[:, 1:].mean(dim=1))
        got = encoder.eval()(pixel_values=gray.repeat(1, 3, 1, 1)).pooler_output  # a gray image as pipelines feed it: RGB
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_the_final_save_exports_the_encoder_from_the_state_dict_the_trainer_gathers(tmp_path, monkeypatch, method):
    import json
    from types import SimpleNamespace

    from safetensors.torch import load_file
    from transformers import TrainingArguments

    from hfssl.pretext.masked_patches import MaskedImageTrainer

    model, _ = tiny_model(method)
    rgb_input(pooled_encoder(model)).save_pretrained(tmp_path / "expected")  # the encoder export, as it always was
    expected = load_file(tmp_path / "expected" / "model.safetensors")
    trainer = MaskedImageTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    )
    trainer.save_model(str(tmp_path / "plain"))
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    assert plain.keys() == expected.keys() and all(torch.equal(plain[k], expected[k]) for k in expected)
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config == json.loads((tmp_path / "expected" / "config.json").read_text())
    trainer.save_model(str(tmp_path / "checkpoint"), _internal_call=True)  # a checkpoint keeps the whole model, decoder too
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["architectures"] == [type(model).__name__]

    # Under FSDP (or ZeRO-3) a process's own modules hold shards: only the state dict the Trainer gathers is the model.
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    gathers = []
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    fsdp_plugin = SimpleNamespace(state_dict_type="StateDictType.FULL_STATE_DICT")
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", fsdp_plugin, raising=False)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda m, unwrap=True: gathers.append(m) or gathered)
    trainer.save_model(str(tmp_path / "fsdp"))
    sharded = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert gathers == [model] and all(torch.equal(sharded[k], expected[k]) for k in expected)


def test_each_method_continues_from_the_other_methods_encoder(tmp_path):
    mae, _ = tiny_model("mae")
    pooled_encoder(mae).save_pretrained(tmp_path / "beit")
    args = VisionModelArguments(model_name_or_path=str(tmp_path / "beit"))
    simmim = build_masked_image_model(masked_image_config(args, PatchMaskingArguments(method="simmim")), str(tmp_path / "beit"))
    assert isinstance(simmim, ViTForMaskedImageModeling)
    again = build_masked_image_model(masked_image_config(args, PatchMaskingArguments(method="mae")), str(tmp_path / "beit"))
    assert isinstance(again, ViTMAEForPreTraining)
    for name, param in mae.vit.named_parameters():
        if name.endswith("k_proj.bias"):  # BEiT has no key bias (softmax cancels it): continued pretraining starts it at 0
            assert not dict(simmim.vit.named_parameters())[name].any() and not dict(again.vit.named_parameters())[name].any()
            continue
        assert torch.equal(dict(simmim.vit.named_parameters())[name], param), name
        assert torch.equal(dict(again.vit.named_parameters())[name], param), name


@pytest.mark.parametrize(
    "model_kw, masking_kw, message",
    [
        (dict(image_size=16, patch_size=4), dict(method="simmim", mask_patch_size=6), "--mask_patch_size 6"),
        (dict(image_size=16, patch_size=4), dict(method="simmim", mask_patch_size=32), "--mask_patch_size 32"),
        (dict(image_size=8, patch_size=4), dict(method="mae", mask_ratio=0.0), "--mask_ratio 0.0 masks 0 of the 4"),
        (dict(image_size=8, patch_size=4), dict(method="mae", mask_ratio=0.9), "--mask_ratio 0.9 masks 4 of the 4"),
        (dict(image_size=8, patch_size=4), dict(method="simmim", mask_ratio=0.9), "--mask_ratio 0.9 masks 4 of the 4"),
    ],
)
def test_mask_geometry_is_checked_against_the_model(model_kw, masking_kw, message):
    with pytest.raises(ValueError, match=message):
        masked_image_config(VisionModelArguments(**model_kw), PatchMaskingArguments(**masking_kw))


@pytest.mark.parametrize("method, ratio, mask_type", [("mae", 0.75, "random"), ("simmim", 0.6, "block")])
def test_each_method_has_its_papers_defaults(method, ratio, mask_type):
    masking = PatchMaskingArguments(method=method)
    assert (masking.mask_ratio, masking.mask_type) == (ratio, mask_type)
    model = VisionModelArguments()
    assert (model.model_preset, model.image_size, model.patch_size) == ("tiny", 16, 4)
    assert VisionModelArguments(model_preset="base").image_size == 224
