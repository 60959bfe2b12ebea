"""The package's two sides: the device runtime stands alone, the host toolchain plugs in."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The device pipeline, one module a stage (STYLE.md); each holds its stage and nothing else.
STAGES = ("source", "landmarks", "features", "window", "model", "alarm", "publish")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_edge_never_imports_convert_and_tensorflow_only_as_the_last_runtime():
    for path in sorted((REPO / "edge").rglob("*.py")):
        roots = {name.split(".")[0] for name in imported_modules(path)}
        assert "convert" not in roots, path
        allowed = {"tensorflow"} if path.name == "model.py" else set()  # tensorflow.lite, the third fallback
        assert not (roots & {"tensorflow", "keras", "tf_keras"}) - allowed, path


def test_the_device_commands_work_without_tensorflow():
    """On a Pi there is no TensorFlow: every edge module imports and the CLI answers."""
    code = (
        "import sys, importlib, pkgutil\n"
        "sys.modules['tensorflow'] = None\n"
        "import edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'): importlib.import_module(m.name)\n"
        "from edge.cli import main\n"
        "sys.exit(main(['config', 'show']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "[model]" in out.stdout


def test_host_commands_without_tensorflow_say_how_to_get_it():
    code = ("import sys; sys.modules['tensorflow'] = None\nfrom edge.cli import main\n"
            "sys.exit(main(['convert', 'tests/fixtures/keras2/conv1d.h5', '--quantize', 'float32', '--output', 'o.tflite']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert "pip install 'cryedge[convert]'" in lines[0]


def imported_names(path: Path) -> set[str]:
    """Modules and the names imported from them (``from a import b`` gives a and a.b), anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_stage_files_hold_only_their_stage():
    """No command line, import hook, printing or flatbuffer handling among the pipeline stages."""
    for stage in STAGES:
        path = REPO / "edge" / f"{stage}.py"
        tree = ast.parse(path.read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert "add_commands" not in functions, f"{stage}: its command belongs in a CLI module"
        names = imported_names(path)
        assert not names & {"argparse", "importlib.abc", "importlib.machinery", "flatbuffers"}, (stage, names)
        assert not [name for name in names if name.endswith("schema_py_generated")], f"{stage}: use edge.tflite_file"
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "print" not in calls, f"{stage}: library code logs, the CLI prints"


def test_one_module_reads_and_writes_tflite_flatbuffers():
    """edge.tflite_file (16-byte aligned buffers) is the only code that packs or parses a .tflite's schema."""
    readers = set()
    for path in sorted([*(REPO / "edge").rglob("*.py"), *(REPO / "convert").rglob("*.py")]):
        names = imported_names(path)
        if "flatbuffers" in names or any(name.split(".")[-1] == "schema_py_generated" for name in names):
            readers.add(path.relative_to(REPO).as_posix())
    assert readers == {"edge/tflite_file.py"}
