"""conf/ reaches the installed package: a wheel in a fresh venv outside the checkout runs a train."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import tomllib

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_and_config_folder_is_listed_in_pyproject():
    """setuptools ships only the listed packages (and warns at every install about conf/ folders it
    would ignore): the list must be the tree, metarec/'s packages and conf/'s folders as metarec.conf.*."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "metarec").rglob("__init__.py")}
    conf = {".".join(("metarec", *d.relative_to(REPO).parts)) for d in [REPO / "conf", *(REPO / "conf").rglob("*")]
            if d.is_dir() and d.name != "__pycache__"}
    assert listed == code | conf


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_finds_its_configs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("metarec-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies (torch, hydra...) come from this venv's site-packages, not reinstalled; a plain
    # path line does not run that folder's .pth files, so the editable checkout stays invisible.
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)

    where = subprocess.run([py, "-c", "import metarec, metarec.conf, os; print(os.path.dirname(metarec.__file__))"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run([venv / "bin" / "metarec", "train", "data=sinusoid", "trainer.max_steps=4", "trainer.val_every=2",
                        "data.n_val_tasks=8", "data.n_test_tasks=8", "trainer.progress=false"],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = list((work / "outputs").glob("*/*/eval.json"))
    assert len(runs) == 1 and "test" in json.loads(runs[0].read_text())["states"]
    assert (runs[0].parent / ".hydra" / "config.yaml").exists()
