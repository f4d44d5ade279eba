"""The layering of docs/architecture.md, read from the code's imports (lazy ones too)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdm_jax"
# Commands: every module directly in mdm_jax/ (python -m mdm_jax.<verb>).
COMMANDS = {f"mdm_jax.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
SELF_CONTAINED = ("models", "diffusion", "data")


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path):
    """Every mdm_jax module a file imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "mdm_jax" or n.startswith("mdm_jax.")}


def python_files(*folders):
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("package", SELF_CONTAINED)
def test_models_diffusion_and_data_import_only_themselves(package):
    own = f"mdm_jax.{package}"
    crossing = {
        str(path.relative_to(ROOT)): sorted(n for n in project_imports(path)
                                            if n != own and not n.startswith(own + "."))
        for path in python_files(f"mdm_jax/{package}")}
    assert {k: v for k, v in crossing.items() if v} == {}


def test_nothing_imports_a_command():
    importing = {}
    for path in python_files("mdm_jax", "tests", "benchmarks", "launch", "configs"):
        commands = sorted(project_imports(path) & COMMANDS)
        if commands:
            importing[str(path.relative_to(ROOT))] = commands
    assert importing == {}


# serving sits beside sampling (docs/architecture.md): what it may import, and who may
# import it (its command alone).
SERVING_IMPORTS = ("serving", "sampling", "runs", "conditioning", "parallel", "models",
                   "diffusion")


def test_serving_imports_the_layers_below_and_only_its_command_imports_it():
    allowed = tuple(f"mdm_jax.{p}" for p in SERVING_IMPORTS)
    crossing = {
        str(path.relative_to(ROOT)): sorted(
            n for n in project_imports(path)
            if not any(n == a or n.startswith(a + ".") for a in allowed))
        for path in python_files("mdm_jax/serving")}
    assert {k: v for k, v in crossing.items() if v} == {}
    importing = sorted(
        str(path.relative_to(ROOT))
        for path in python_files("mdm_jax", "benchmarks", "launch", "configs")
        if path.parent != PACKAGE / "serving" and path != PACKAGE / "serve.py"
        and any(n.startswith("mdm_jax.serving") for n in project_imports(path)))
    assert importing == []


def test_the_rule_sees_imports_inside_functions(tmp_path):
    # The check above must catch a lazy import, the kind that hid a cycle before.
    sample = tmp_path / "lazy.py"
    sample.write_text("def f():\n    from mdm_jax.data import tokenizer\n"
                      "    import mdm_jax.train\n")
    assert project_imports(sample) == {"mdm_jax.data", "mdm_jax.data.tokenizer",
                                       "mdm_jax.train"}


def test_commands_are_the_documented_ones():
    documented = (ROOT / "docs" / "architecture.md").read_text()
    assert all(f"mdm_jax.{c.split('.')[-1]}" in documented for c in COMMANDS), COMMANDS
