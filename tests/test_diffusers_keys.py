"""The diffusers key map (lightx2v_nodes/wan/keys.py) against a table written here, parameter by parameter, from the
public diffusers source: WanTransformer3DModel's module names (src/diffusers/models/transformers/transformer_wan.py)
and its Wan conversion (scripts/convert_wan_to_diffusers.py). Each original Wan name must map to its diffusers name
and back, and a file saved with diffusers' names must load as the original weights."""

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.checkpoint import load_wan_checkpoint
from lightx2v_nodes.wan.keys import diffusers_to_original, original_to_diffusers

# Original Wan parameter -> WanTransformer3DModel parameter, outside the blocks.
TOP = {
    "patch_embedding.weight": "patch_embedding.weight",
    "patch_embedding.bias": "patch_embedding.bias",
    "text_embedding.0.weight": "condition_embedder.text_embedder.linear_1.weight",
    "text_embedding.0.bias": "condition_embedder.text_embedder.linear_1.bias",
    "text_embedding.2.weight": "condition_embedder.text_embedder.linear_2.weight",
    "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
    "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight",
    "time_embedding.0.bias": "condition_embedder.time_embedder.linear_1.bias",
    "time_embedding.2.weight": "condition_embedder.time_embedder.linear_2.weight",
    "time_embedding.2.bias": "condition_embedder.time_embedder.linear_2.bias",
    "time_projection.1.weight": "condition_embedder.time_proj.weight",
    "time_projection.1.bias": "condition_embedder.time_proj.bias",
    "head.head.weight": "proj_out.weight",
    "head.head.bias": "proj_out.bias",
    "head.modulation": "scale_shift_table",
    # CLIP image branch (I2V, FLF2V): LayerNorm, Linear, GELU, Linear, LayerNorm; FLF2V adds a position table.
    "img_emb.proj.0.weight": "condition_embedder.image_embedder.norm1.weight",
    "img_emb.proj.0.bias": "condition_embedder.image_embedder.norm1.bias",
    "img_emb.proj.1.weight": "condition_embedder.image_embedder.ff.net.0.proj.weight",
    "img_emb.proj.1.bias": "condition_embedder.image_embedder.ff.net.0.proj.bias",
    "img_emb.proj.3.weight": "condition_embedder.image_embedder.ff.net.2.weight",
    "img_emb.proj.3.bias": "condition_embedder.image_embedder.ff.net.2.bias",
    "img_emb.proj.4.weight": "condition_embedder.image_embedder.norm2.weight",
    "img_emb.proj.4.bias": "condition_embedder.image_embedder.norm2.bias",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
# The same inside blocks.N.
BLOCK = {
    "self_attn.q.weight": "attn1.to_q.weight", "self_attn.q.bias": "attn1.to_q.bias",
    "self_attn.k.weight": "attn1.to_k.weight", "self_attn.k.bias": "attn1.to_k.bias",
    "self_attn.v.weight": "attn1.to_v.weight", "self_attn.v.bias": "attn1.to_v.bias",
    "self_attn.o.weight": "attn1.to_out.0.weight", "self_attn.o.bias": "attn1.to_out.0.bias",
    "self_attn.norm_q.weight": "attn1.norm_q.weight",
    "self_attn.norm_k.weight": "attn1.norm_k.weight",
    "cross_attn.q.weight": "attn2.to_q.weight", "cross_attn.q.bias": "attn2.to_q.bias",
    "cross_attn.k.weight": "attn2.to_k.weight", "cross_attn.k.bias": "attn2.to_k.bias",
    "cross_attn.v.weight": "attn2.to_v.weight", "cross_attn.v.bias": "attn2.to_v.bias",
    "cross_attn.o.weight": "attn2.to_out.0.weight", "cross_attn.o.bias": "attn2.to_out.0.bias",
    "cross_attn.norm_q.weight": "attn2.norm_q.weight",
    "cross_attn.norm_k.weight": "attn2.norm_k.weight",
    # I2V: keys and values of the CLIP image tokens, and their norm.
    "cross_attn.k_img.weight": "attn2.add_k_proj.weight", "cross_attn.k_img.bias": "attn2.add_k_proj.bias",
    "cross_attn.v_img.weight": "attn2.add_v_proj.weight", "cross_attn.v_img.bias": "attn2.add_v_proj.bias",
    "cross_attn.norm_k_img.weight": "attn2.norm_added_k.weight",
    # Wan's norm3 (the affine norm before cross-attention) is diffusers' norm2; norm1/norm2 of Wan hold no weights.
    "norm3.weight": "norm2.weight", "norm3.bias": "norm2.bias",
    "ffn.0.weight": "ffn.net.0.proj.weight", "ffn.0.bias": "ffn.net.0.proj.bias",
    "ffn.2.weight": "ffn.net.2.weight", "ffn.2.bias": "ffn.net.2.bias",
    "modulation": "scale_shift_table",
}
BLOCK_INDICES = (0, 7, 39)  # single and double digits: the index is kept, never matched as part of a name


def expected_pairs():
    pairs = list(TOP.items())
    for i in BLOCK_INDICES:
        pairs += [(f"blocks.{i}.{original}", f"blocks.{i}.{diffusers}") for original, diffusers in BLOCK.items()]
    return pairs


def diffusers_name(key):
    """This test's own reading of a key: the table above, never the engine's."""
    if key.startswith("blocks."):
        _, index, rest = key.split(".", 2)
        return f"blocks.{index}.{BLOCK[rest]}"
    return TOP[key]


def test_each_name_maps_both_ways():
    wrong = [(original, diffusers, original_to_diffusers(original), diffusers_to_original(diffusers))
             for original, diffusers in expected_pairs()
             if original_to_diffusers(original) != diffusers or diffusers_to_original(diffusers) != original]
    assert wrong == [], "(original, diffusers, mapped to diffusers, mapped to original): " + repr(wrong)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_the_table_names_every_parameter_of_each_variant(task):
    """So that no parameter of a supported variant escapes the check above."""
    for key in synthetic.parameter_shapes(synthetic.tiny_config(task)):
        diffusers_name(key)  # a KeyError names the parameter the table lacks


@pytest.mark.parametrize("task, prefix", [("t2v", ""), ("flf2v", "transformer.")])
def test_a_file_with_diffusers_names_loads_as_the_original_weights(tmp_path, task, prefix):
    cfg = synthetic.tiny_config(task)
    weights = synthetic.random_state_dict(cfg, seed=11)
    path = str(tmp_path / "diffusion_pytorch_model.safetensors")
    save_file({prefix + diffusers_name(k): v for k, v in weights.items()}, path)
    loaded, detected, _ = load_wan_checkpoint(path)
    assert detected == cfg and set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
