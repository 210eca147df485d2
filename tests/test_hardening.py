"""Bad inputs get the pack's own clear errors: code-carrying pickles (every loader, one message) and the error
type ComfyUI shows in its UI."""

import os
import pickle

import pytest

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.lora.files import read_lora_file
from lightx2v_nodes.vae.checkpoint import read_state_dict as read_tiny_vae  # noqa
from lightx2v_nodes.wan.checkpoint import load_wan_checkpoint


class RunsCode:
    """A pickled object whose loading would run a shell command (it would create `marker`)."""

    marker = ""

    def __reduce__(self):
        return (os.system, ("touch " + RunsCode.marker,))


@pytest.mark.parametrize("loader, name", [(load_wan_checkpoint, "dit.pt"), (read_lora_file, "lora.pt"),
                                          (read_tiny_vae, "taew2_1.pth")])
def test_code_carrying_pickle_gets_one_clear_message(tmp_path, loader, name):
    RunsCode.marker = str(tmp_path / "executed")
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump({"blocks.0.weight": RunsCode()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(LightX2VError) as info:
        loader(str(path))
    message = str(info.value)
    assert message.startswith(f"Refused to load '{name}': it asks to call posix.system while loading")
    assert "could run code" in message and "Use a .safetensors version of this file." in message
    for unsafe_or_wrong_advice in ("weights_only", "will likely succeed", "ownload"):
        assert unsafe_or_wrong_advice not in message
    assert not os.path.exists(RunsCode.marker), "code from the pickle was executed"


def test_ui_error_type_names_the_pack():
    # ComfyUI's execution.full_type_name, which labels the error in the UI: module + "." + qualified name.
    assert f"{LightX2VError.__module__}.{LightX2VError.__qualname__}" == "lightx2v.LightX2VError"


def _block_folder(tmp_path):
    import json

    from lightx2v_nodes.wan import synthetic
    from lightx2v_nodes.wan.checkpoint import INDEX_NAME

    cfg = synthetic.tiny_config("t2v")
    folder = synthetic.write_checkpoint(synthetic.random_state_dict(cfg), str(tmp_path / "blocks"), "blocks")
    index = os.path.join(folder, INDEX_NAME)
    with open(index, encoding="utf-8") as f:
        record = json.load(f)
    return folder, index, record


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
def test_block_folder_index_cannot_name_files_outside_the_folder(tmp_path, escape):
    import json
    import shutil

    folder, index, record = _block_folder(tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(os.path.join(folder, "block_1.safetensors"), outside)
    entry = {"absolute": str(outside), "dotdot": "../outside.safetensors", "symlink": "link.safetensors"}[escape]
    if escape == "symlink":
        os.symlink(outside, os.path.join(folder, "link.safetensors"))
    record["weight_map"] = {k: (entry if v == "block_1.safetensors" else v) for k, v in record["weight_map"].items()}
    with open(index, "w", encoding="utf-8") as f:
        json.dump(record, f)
    with pytest.raises(LightX2VError, match=f"folder '{folder}' names '{entry}', which is outside the folder"):
        load_wan_checkpoint(folder)


def test_lazy_reader_refuses_a_block_file_linking_outside(tmp_path):
    from lightx2v_nodes.offload.lazy import block_file

    folder, _, _ = _block_folder(tmp_path)
    target = os.path.join(folder, "block_1.safetensors")
    os.rename(target, tmp_path / "moved.safetensors")
    os.symlink(tmp_path / "moved.safetensors", target)
    assert block_file(folder, 0) == os.path.realpath(os.path.join(folder, "block_0.safetensors"))
    with pytest.raises(LightX2VError, match="outside the folder"):
        block_file(folder, 1)
