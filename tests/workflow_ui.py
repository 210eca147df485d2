"""UI-format workflow JSON (what ComfyUI's Save/Export writes) built from node schemas, and checked against them.

Widget values are laid out in the order the frontend reads them: every widget input of the schema
(required, then optional), with the control value ("fixed", "randomize", ...) after inputs that have
`control_after_generate`. Building from the live schemas means a renamed or reordered input breaks the
build and the checks instead of silently shifting values in users' graphs.
"""

from __future__ import annotations

import uuid

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # node types the frontend defines itself
# Combo inputs listing the user's files: their values depend on what was downloaded.
FILE_INPUTS = {"model_name", "lora_name", "vae_name", "clip_name", "unet_name", "ckpt_name", "image"}


def input_specs(node_class) -> list[tuple[str, str, dict]]:
    """[(name, type, options)] of a node's inputs, required first, in schema order."""
    types = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            out.append((name, "COMBO" if isinstance(kind, list) else str(kind), options))
    return out


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput", False)


def has_control_widget(name: str, kind: str, options: dict) -> bool:
    """The frontend adds a control widget (fixed/randomize/...) after these, also to INT inputs named seed."""
    return bool(options.get("control_after_generate")) or (kind == "INT" and name in ("seed", "noise_seed"))


def widget_layout(node_class) -> list[tuple[str, bool]]:
    """[(input name, is_control_value)] for each entry of widgets_values."""
    layout = []
    for name, kind, options in input_specs(node_class):
        if is_widget(kind, options):
            layout.append((name, False))
            if has_control_widget(name, kind, options) or options.get("image_upload"):
                layout.append((name, True))
    return layout


def output_types(node_class) -> list[tuple[str, str]]:
    types = [str(t) for t in node_class.RETURN_TYPES]
    names = getattr(node_class, "RETURN_NAMES", None) or types
    return list(zip([str(n) for n in names], types))


def build_workflow(spec: dict, node_classes: dict) -> dict:
    """spec = {"nodes": [(key, type, {input: value or "otherkey.slot"}, extra)], "notes": [...]} -> UI JSON.

    A string "key.N" for a non-widget input is a link from output N of node `key`.
    extra may hold "mode" (2 = muted) and "title".
    """
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(spec["nodes"])}
    depth: dict[str, int] = {}
    links, nodes = [], []
    for key, node_type, values, *extra in spec["nodes"]:
        extra = extra[0] if extra else {}
        node = {"id": ids[key], "type": node_type, "pos": [0, 0], "size": [340, 0], "flags": {},
                "order": len(nodes), "mode": extra.get("mode", 0), "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}, "widgets_values": []}
        if "title" in extra:
            node["title"] = extra["title"]
        if node_type in FRONTEND_ONLY:
            node["widgets_values"] = [values["text"]]
            text = values["text"]
            node["size"] = [440, 60 + 20 * sum(1 + len(line) // 55 for line in text.splitlines())]
            node["color"], node["bgcolor"] = "#432", "#653"
            depth[key] = -1  # notes get a column of their own, left of the graph
            nodes.append(node)
            continue
        cls = node_classes[node_type]
        unknown = set(values) - {name for name, _, _ in input_specs(cls)}
        if unknown:
            raise KeyError(f"{node_type} has no input(s) {sorted(unknown)}")
        depth[key] = 0
        for name, kind, options in input_specs(cls):
            value = values.get(name)
            if is_widget(kind, options):
                node["widgets_values"].append(value if name in values else options.get("default"))
                if has_control_widget(name, kind, options):
                    node["widgets_values"].append("fixed")
                if options.get("image_upload"):  # the frontend's upload button is a widget too
                    node["widgets_values"].append("image")
            else:
                slot = {"name": name, "type": kind, "link": None}
                if isinstance(value, str):
                    src_key, src_slot = value.rsplit(".", 1)
                    link_id = len(links) + 1
                    links.append([link_id, ids[src_key], int(src_slot), ids[key], len(node["inputs"]), kind])
                    slot["link"] = link_id
                    depth[key] = max(depth[key], depth[src_key] + 1)
                elif value is not None:
                    raise ValueError(f"{node_type}.{name}: links are written 'node.slot'")
                node["inputs"].append(slot)
        node["outputs"] = [{"name": name, "type": kind, "links": [], "slot_index": i}
                           for i, (name, kind) in enumerate(output_types(cls))]
        node["size"][1] = 46 + 24 * (max(len(node["inputs"]), len(node["outputs"])) + len(node["widgets_values"]))
        nodes.append(node)
    by_id = {n["id"]: n for n in nodes}
    for link_id, src, src_slot, _dst, _dst_slot, _kind in links:
        by_id[src]["outputs"][src_slot]["links"].append(link_id)
    _place(nodes, depth, {v: k for k, v in ids.items()})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, spec["name"])), "revision": 0,
        "last_node_id": len(nodes), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4,
    }


def _place(nodes, depth, key_of):
    """Columns by link depth (notes left of everything), stacked top to bottom."""
    heights: dict[int, int] = {}
    for node in nodes:
        column = depth[key_of[node["id"]]] + 1
        node["pos"] = [40 + 480 * column, heights.get(column, 40)]
        heights[column] = node["pos"][1] + node["size"][1] + 60


def check_against_schemas(workflow: dict, node_classes: dict) -> list[str]:
    """Problems a user would hit loading this workflow with the current nodes (empty list = fine)."""
    problems = []
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY:
            continue
        cls = node_classes.get(node_type)
        if cls is None:
            problems.append(f"node {node['id']}: unknown node type {node_type}")
            continue
        specs = {name: (kind, options) for name, kind, options in input_specs(cls)}
        for slot in node["inputs"]:
            if slot["name"] not in specs:
                problems.append(f"node {node['id']} {node_type}: input '{slot['name']}' no longer exists")
            elif slot.get("link") is not None and specs[slot["name"]][0] != slot["type"]:
                problems.append(f"node {node['id']} {node_type}: input '{slot['name']}' is now {specs[slot['name']][0]}")
        layout = widget_layout(cls)
        values = node.get("widgets_values", [])
        if len(values) != len(layout):
            problems.append(f"node {node['id']} {node_type}: {len(values)} widget values, schema has {len(layout)}")
            continue
        for (name, is_control), value in zip(layout, values):
            kind, options = specs[name]
            if is_control:
                continue
            problem = _value_problem(kind, options, value, cls, name)
            if problem:
                problems.append(f"node {node['id']} {node_type}.{name}: {problem}")
    return problems


def _value_problem(kind, options, value, cls, name):
    if kind == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"expected an integer, got {value!r}"
    if kind == "FLOAT" and not isinstance(value, (int, float)):
        return f"expected a number, got {value!r}"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"expected a boolean, got {value!r}"
    if kind == "STRING" and not isinstance(value, str):
        return f"expected text, got {value!r}"
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            return f"{value} outside [{options.get('min')}, {options.get('max')}]"
    if kind == "COMBO":
        choices = _combo_choices(cls, name)
        # File lists depend on what the user downloaded; fixed option lists must contain the value.
        if choices is not None and name not in FILE_INPUTS and value not in choices:
            return f"{value!r} is not one of {choices}"
    return None


def _combo_choices(cls, name):
    for section in ("required", "optional"):
        spec = cls.INPUT_TYPES().get(section, {}).get(name)
        if spec is None:
            continue
        if isinstance(spec[0], list):
            return spec[0]
        if len(spec) > 1 and isinstance(spec[1], dict) and "options" in spec[1]:
            return spec[1]["options"]
    return None
