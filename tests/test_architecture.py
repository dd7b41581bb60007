"""The dependency rules of the package layout (README "Architecture"), read from the source's import statements."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "lliejax")


def _modules():
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path: str) -> set[str]:
  """Every module an ``import`` / ``from ... import`` names, at any depth (function-level imports included)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


MODULES = dict(_modules())


def _lliejax_imports(module: str) -> set[str]:
  return {m for m in _imports(MODULES[module]) if m.startswith("lliejax.") and m in MODULES}


@pytest.mark.parametrize("core", ["lliejax.train", "lliejax.evaluate", "lliejax.inference", "lliejax.checkpoint",
                                  "lliejax.state"])
def test_core_knows_only_the_method_interface(core):
  """The generic modules import no network, process or loss module, and no particular method."""
  bad = {m for m in _lliejax_imports(core)
         if m.startswith(("lliejax.models", "lliejax.diffusion", "lliejax.losses"))
         or (m.startswith("lliejax.methods.") and m != "lliejax.methods.base")}
  assert not bad, f"{core} imports {sorted(bad)}"


@pytest.mark.parametrize("package", ["lliejax.diffusion", "lliejax.losses", "lliejax.models", "lliejax.metrics"])
def test_building_blocks_import_only_each_other(package):
  """Processes, losses, networks and metrics know only each other (and the weight-file readers of ``interop``)."""
  allowed = ("lliejax.diffusion", "lliejax.losses", "lliejax.models", "lliejax.metrics", "lliejax.interop.torch_io",
             "lliejax.interop.keymap", "lliejax.fileutil")
  for module in (m for m in MODULES if m == package or m.startswith(package + ".")):
    bad = {m for m in _lliejax_imports(module) if not m.startswith(allowed)}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_only_checkpoint_imports_orbax():
  users = sorted(m for m, path in MODULES.items() if any(i.startswith("orbax") for i in _imports(path)))
  assert users == ["lliejax.checkpoint"]


def test_only_interop_and_tests_import_torch():
  users = sorted(m for m, path in MODULES.items() if any(i.split(".")[0] == "torch" for i in _imports(path)))
  assert all(m.startswith("lliejax.interop.") for m in users), users


def test_configs_import_only_ml_collections_and_config_utils():
  for f in os.listdir(os.path.join(ROOT, "configs")):
    if f.endswith(".py"):
      imports = _imports(os.path.join(ROOT, "configs", f)) - {"__future__", "__future__.annotations"}
      assert imports <= {"ml_collections", "lliejax", "lliejax.config_utils"}, (f, imports)


def test_one_image_extension_list():
  """Image extensions are listed in lliejax.data.image_io alone."""
  pattern = re.compile(r"""["']\.jpe?g["']""")
  owners = sorted(m for m, path in MODULES.items() if pattern.search(open(path).read()))
  assert owners == ["lliejax.data.image_io"], owners
