"""Every accepted checkpoint layout and dtype loads to the same weights; bad files give clear errors."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.checkpoint import load_wan_checkpoint


@pytest.fixture(scope="module", params=["t2v", "i2v", "flf2v"])
def task_weights(request):
    cfg = synthetic.tiny_config(request.param)
    return cfg, synthetic.random_state_dict(cfg, seed=7)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", synthetic.LAYOUTS)
def test_every_layout_and_dtype_loads_the_same_weights(tmp_path, task_weights, layout, dtype):
    cfg, weights = task_weights
    suffix = {"pt": ".pt", "blocks": ""}.get(layout, ".safetensors")
    path = synthetic.write_checkpoint(weights, str(tmp_path / f"model{suffix}"), layout, dtype)
    loaded, detected, _ = load_wan_checkpoint(path)
    assert detected == cfg
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        expected = value.to(synthetic.DTYPES[dtype])
        assert loaded[key].dtype == expected.dtype and torch.equal(loaded[key], expected), key


def test_detects_published_shapes():
    from lightx2v_nodes.wan.config import detect_config
    from lightx2v_nodes.wan.synthetic import parameter_shapes
    from lightx2v_nodes.wan.config import WanConfig

    for dim, ffn, layers, in_dim, name in [(1536, 8960, 30, 16, "Wan2.1 T2V 1.3B"), (5120, 13824, 40, 36, "Wan2.1 I2V 14B")]:
        cfg = WanConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers, in_dim=in_dim,
                        model_type="t2v" if in_dim == 16 else "i2v")
        detected = detect_config(parameter_shapes(cfg))
        assert detected == cfg and detected.variant == name and detected.num_heads == dim // 128


def test_not_a_wan_file_says_what_was_found(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"decoder.22.bias": torch.zeros(3), "decoder.1.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(LightX2VError, match="not a Wan2.1 DiT.*VAE"):
        load_wan_checkpoint(str(path))


def test_truncated_file_is_reported(tmp_path):
    cfg = synthetic.tiny_config("t2v")
    path = synthetic.write_checkpoint(synthetic.random_state_dict(cfg), str(tmp_path / "m.safetensors"))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(LightX2VError, match="damaged or incomplete"):
        load_wan_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + _RunsCode.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    _RunsCode.marker = str(tmp_path / "executed")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"patch_embedding.weight": _RunsCode()}, f)
    with pytest.raises(LightX2VError, match="Refused to load"):
        load_wan_checkpoint(str(path))
    assert not os.path.exists(_RunsCode.marker), "code from the pickle was executed"


def test_incomplete_block_directory(tmp_path):
    cfg = synthetic.tiny_config("t2v")
    path = synthetic.write_checkpoint(synthetic.random_state_dict(cfg), str(tmp_path / "blocks"), "blocks")
    os.remove(os.path.join(path, "block_1.safetensors"))
    with pytest.raises(LightX2VError, match="incomplete.*block_1.safetensors"):
        load_wan_checkpoint(path)
