"""The base class of every pack node: combo values are checked against the node's own schema before it runs.

ComfyUI 0.3.75 does not check a V3 node's combo values on the server, so an API prompt can send a value the UI
never offers; without this check it would reach the engine and fail with a raw KeyError.
"""

from comfy_api.latest import io

from ..lightx2v_nodes.errors import LightX2VError

SHOWN_CHOICES = 12  # long file lists are cut short in the message


def _choices_text(options: list) -> str:
    if not options:
        return ("the list is empty (for a file list: copy the file into its models/ folder, then refresh the node "
                "list with R)")
    shown = ", ".join(str(o) for o in options[:SHOWN_CHOICES])
    more = len(options) - SHOWN_CHOICES
    return "choose one of " + shown + (f" (and {more} more)" if more > 0 else "")


def unknown_combo_values(schema: io.Schema, inputs: dict) -> list[str]:
    """One sentence per combo input whose value in `inputs` is not among the schema's options."""
    problems = []
    for spec in schema.inputs:
        if isinstance(spec, io.Combo.Input) and spec.id in inputs and inputs[spec.id] not in spec.options:
            problems.append(f"unknown {spec.id} '{inputs[spec.id]}': {_choices_text(spec.options)}.")
    return problems


class LightX2VNode(io.ComfyNode):
    """A pack node: ComfyUI calls `execute`, which checks the combo values and then calls the node's `run`."""

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        schema = cls.define_schema()  # built fresh, so file lists are as current as the UI's after a refresh
        problems = unknown_combo_values(schema, inputs)
        if problems:
            raise LightX2VError(f"{schema.display_name or schema.node_id}: " + " ".join(problems))
        return cls.run(**inputs)

    @classmethod
    def run(cls, **inputs) -> io.NodeOutput:
        raise NotImplementedError(f"{cls.__name__} defines no run()")
