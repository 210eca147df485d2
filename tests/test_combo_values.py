"""Every combo input of every pack node refuses a value outside its list with one clear error (ComfyUI 0.3.75 does
not check V3 combo values on the server). The inputs are enumerated from the live schemas."""

import pytest

from harness import raises_lightx2v_error, run_prompt

PACK_MODULE = "custom_nodes.lightx2v-nodes"  # what ComfyUI records as the module of the pack's nodes
BOGUS = "bogus-value"


def pack_nodes(comfy_nodes) -> dict:
    return {node_id: cls for node_id, cls in comfy_nodes.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == PACK_MODULE}


def combo_inputs(cls) -> list:
    from comfy_api.latest import io

    return [spec for spec in cls.define_schema().inputs if isinstance(spec, io.Combo.Input)]


def valid_value(spec):
    if spec.default in spec.options:
        return spec.default
    return spec.options[0] if spec.options else "nothing-to-choose"


def expected_choices(options: list) -> str:
    if not options:
        return "the list is empty"
    return "choose one of " + ", ".join(str(o) for o in options[:12])


def every_combo(comfy_nodes):
    return [(node_id, spec) for node_id, cls in sorted(pack_nodes(comfy_nodes).items()) for spec in combo_inputs(cls)]


def test_every_pack_node_runs_the_shared_check(comfy_nodes):
    nodes = pack_nodes(comfy_nodes)
    assert len(nodes) >= 14, sorted(nodes)
    for node_id, cls in nodes.items():
        assert "LightX2VNode" in [base.__name__ for base in cls.__mro__], f"{node_id} does not derive from LightX2VNode"
        assert "execute" not in vars(cls), f"{node_id} overrides execute (the combo check lives there); define run()"


def test_every_combo_input_names_itself_and_its_choices(comfy_nodes):
    combos = every_combo(comfy_nodes)
    names = {(node_id, spec.id) for node_id, spec in combos}
    # The raw KeyErrors first seen through the server are among the enumerated inputs.
    assert {("LightX2VLoadWanDiT", "dtype"), ("LightX2VFourStepSampler", "mode"),
            ("LightX2VLoadTinyVAE", "dtype")} <= names
    nodes = pack_nodes(comfy_nodes)
    for node_id, target in combos:
        cls = nodes[node_id]
        schema = cls.define_schema()
        inputs = {spec.id: None for spec in schema.inputs}
        inputs.update({spec.id: valid_value(spec) for spec in combo_inputs(cls)})
        inputs[target.id] = BOGUS
        with raises_lightx2v_error(f"^{schema.display_name}: ") as raised:
            cls().execute(**inputs)
        message = str(raised.value)
        assert f"unknown {target.id} '{BOGUS}': {expected_choices(target.options)}" in message, (node_id, message)


def test_long_lists_are_cut_short(comfy_nodes):
    import sys

    from comfy_api.latest import io

    base_class = next(b for b in comfy_nodes["LightX2VLoadWanDiT"].__mro__ if b.__name__ == "LightX2VNode")
    base = sys.modules[base_class.__module__]  # the pack's nodes/base.py as ComfyUI imported it
    schema = io.Schema(node_id="Example", inputs=[io.Combo.Input("name", options=[f"f{i}" for i in range(30)])])
    (problem,) = base.unknown_combo_values(schema, {"name": "x"})
    assert problem == ("unknown name 'x': choose one of " + ", ".join(f"f{i}" for i in range(12)) + " (and 18 more).")
    assert base.unknown_combo_values(schema, {"name": "f29"}) == []


@pytest.mark.parametrize("node, inputs, message", [
    ("LightX2VLoadWanDiT", {"dtype": "fp64", "attention": "auto"},
     "unknown dtype 'fp64': choose one of auto, bf16, fp16, fp32."),
    ("LightX2VLoadTinyVAE", {"dtype": "fp64", "decode_mode": "chunked"},
     "unknown dtype 'fp64': choose one of auto, "),
])
def test_api_prompt_with_an_unknown_value_gets_the_clear_error(comfy_nodes, models_dir, node, inputs, message):
    """Through ComfyUI's executor, as a hand-written API prompt reaches it (the file is never read)."""
    folder, name_input = {"LightX2VLoadWanDiT": ("diffusion_models", "model_name"),
                          "LightX2VLoadTinyVAE": ("vae_approx", "vae_name")}[node]
    (models_dir / folder / "test_combo_values_unread.safetensors").write_bytes(b"not read")
    prompt = {"1": {"class_type": node, "inputs": {name_input: "test_combo_values_unread.safetensors", **inputs}}}
    error = run_prompt(prompt, outputs=["1"], expect_error=True).error()
    assert error["exception_type"] == "lightx2v.LightX2VError"
    assert message in error["exception_message"], error["exception_message"]
