"""The built wheel holds every package of the namespace, the prompts, the templates and the released
checkpoint with its ONNX export, and imports (and serves) from outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from fresh_machine import copy_source


@pytest.mark.slow
def test_wheel_contents_and_import(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info into the folder it builds, not into the checkout.
    source = copy_source(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("casereview-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in ("training", "tools", "tools/reporter", "agents", "graphs", "cli", "evaluation", "studies"):
        assert f"casereview/{sub}/__init__.py" in names
    assert {"casereview/prompts/grounded.j2", "casereview/prompts/_macros.j2",
            "casereview/templates/case_review.md.j2", "casereview/released/classifier.safetensors",
            "casereview/released/classifier.onnx"} <= names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import casereview.graphs.graph as g, casereview.training.classifier as c;"
            "from casereview.tools.reporter import list_variants;"
            "assert g.__file__.startswith(%r), g.__file__;"
            "assert c.open_classifier().checkpoint_sha256 == c.sha256_file(c.released_checkpoint());"
            "assert 'grounded' in list_variants()" % str(target))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""})
