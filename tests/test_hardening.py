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
