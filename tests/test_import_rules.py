"""The pack's imports run one way, checked on the source (ast), without importing anything.

Layers, bottom to top: kernels -> the ground floor (errors, placeholders, parameters, kernel_loader, pickle_weights) -> quant ->
wan -> (lora, offload, cache, sampling, vae) -> (converter, parallel) -> comfy_*.py adapters -> nodes. A module may import its own
layer or lower ones. Adapters import comfy_common.py, never each other. Only comfy_*.py, nodes/ and the root
__init__.py import ComfyUI.
"""

import ast
import pathlib

from comfy_env import COMFY_MODULES

ROOT = pathlib.Path(__file__).resolve().parent.parent
GROUND = {"errors", "placeholders", "parameters", "kernel_loader", "pickle_weights"}
ENGINE_LEVEL = {"quant": 2, "wan": 3, "lora": 4, "offload": 4, "cache": 4, "sampling": 4, "vae": 4,
                "converter": 5, "convert": 5, "parallel": 5, "demo": 5, "synthetic_conditioning": 1}


def _modules(root):
    files = [root / "__init__.py", *root.glob("kernels/*.py"), *root.glob("nodes/*.py"), *root.glob("lightx2v_nodes/**/*.py")]
    for path in files:
        if not path.exists():
            continue
        parts = path.relative_to(root).with_suffix("").parts
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        yield path, parts, package


def _imports(path, package):
    """(absolute dotted name inside the pack or a top-level module name, line) of every import."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module, node.lineno, False
            else:
                base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
                names = [f"{node.module}" if node.module else alias.name for alias in node.names]
                for name in (names[:1] if node.module else names):
                    yield ".".join(base + name.split(".")), node.lineno, True


def _level(parts):
    """(level, is_adapter) of a module given by its path parts."""
    if parts[0] == "kernels":
        return 0, False
    if parts[0] == "nodes" or parts == ("__init__",):
        return 9, False
    if parts[-1].startswith("comfy_"):
        return (7 if parts[-1] == "comfy_common" else 8), True
    if len(parts) == 1 or parts[1] in GROUND or parts[1] == "__init__":
        return 1, False
    return ENGINE_LEVEL[parts[1]], False


def violations(root=ROOT):
    found = []
    for path, parts, package in _modules(root):
        own, own_adapter = _level(parts)
        for name, line, relative in _imports(path, package):
            where = f"{'/'.join(parts)}.py:{line} imports {name}"
            top = name.split(".")[0]
            if not relative and top in COMFY_MODULES and top not in ("nodes",) or (not relative and name == "nodes"):
                if not (own_adapter or own == 9):
                    found.append(where + " (only comfy_*.py, nodes/ and __init__.py may import ComfyUI)")
                continue
            target = tuple(name.split("."))
            if not relative and target[0] not in ("lightx2v_nodes", "kernels"):
                continue
            if target[0] == "lightx2v_nodes" and len(target) > 1 and target[1] not in ENGINE_LEVEL and target[1] not in GROUND \
                    and not target[1].startswith("comfy_"):
                target = target[:1]  # `from .. import kernels` style names resolve below
            level, _ = _level(target) if target != ("lightx2v_nodes",) else (1, False)
            if level > own:
                found.append(where + f" (layer {level} above its own layer {own})")
            elif own_adapter and target[-1].startswith("comfy_") and target[-1] != "comfy_common" and target[:len(parts)] != parts:
                found.append(where + " (adapters import comfy_common, not each other)")
    return found


def test_imports_run_one_way():
    assert violations() == []


def test_the_checker_sees_a_back_up_import(tmp_path):
    """A quant module importing wan is reported (the checker is not vacuous)."""
    fake_root = tmp_path
    (fake_root / "lightx2v_nodes" / "quant").mkdir(parents=True)
    (fake_root / "lightx2v_nodes" / "quant" / "bad.py").write_text("from ..wan.checkpoint import read_state_dict\n")
    (fake_root / "lightx2v_nodes" / "wan").mkdir()
    (fake_root / "lightx2v_nodes" / "wan" / "ok.py").write_text("import comfy.utils\n")
    found = violations(fake_root)
    assert any("quant/bad.py:1 imports lightx2v_nodes.wan.checkpoint" in f for f in found), found
    assert any("wan/ok.py:1 imports comfy.utils" in f for f in found), found
