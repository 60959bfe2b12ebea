"""The package's two sides: the device runtime stands alone, the host toolchain plugs in."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    for path in sorted((REPO / "edge").glob("*.py")):
        roots = {name.split(".")[0] for name in imported_modules(path)}
        assert "convert" not in roots, path.name
        allowed = {"tensorflow"} if path.name == "model.py" else set()  # tensorflow.lite, the third fallback
        assert not (roots & {"tensorflow", "keras", "tf_keras"}) - allowed, path.name


def test_the_device_commands_work_without_tensorflow():
    """On a Pi there is no TensorFlow: every edge module imports and the CLI answers."""
    code = (
        "import sys, importlib, pkgutil\n"
        "sys.modules['tensorflow'] = None\n"
        "import edge\n"
        "for m in pkgutil.iter_modules(edge.__path__): importlib.import_module('edge.' + m.name)\n"
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
