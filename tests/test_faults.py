"""Faults and bad input end in one clear line, a non-zero exit and no traceback (the full trace with
HYDRA_FULL_ERROR=1); a NaN, a full disk or a crafted checkpoint never damages or runs anything.

Every case is a real subprocess (the installed command, or `python -c` with a fault injected);
they run a few at a time in one module fixture, and each case is then checked by its own test.
Cases already in test_cli.py (missing data.root, unknown override, wrong type, device=cuda without
CUDA) are not repeated here.
"""
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import METAREC, ML100K, read_json

SINUSOID = ["data=sinusoid", "trainer.meta_batch_size=4", "trainer.val_every=5", "trainer.log_every=5",
            "trainer.max_steps=20", "trainer.progress=false", "device=cpu", "device.threads=1",
            "data.n_val_tasks=10", "data.n_test_tasks=10"]
MOVIELENS = ["trainer.max_steps=2", "trainer.meta_batch_size=4", "trainer.progress=false", "device=cpu",
             "device.threads=1", "data.split=[0.7,0.1,0.2]", "data.heavy_users=false"]  # MeLU's split: the messages' numbers

# `python -c` prologues that inject one fault into an otherwise real run of `metarec ...`.
RUN_MAIN = "\nfrom metarec.cli import main\nsys.exit(main())\n"
DISK_FULL = textwrap.dedent("""
    import builtins, errno, os, sys
    real_open, last_writes = builtins.open, []
    class FullDisk:  # the disk fills up while the second last.pt is written
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def fileno(self): return self.f.fileno()
        def flush(self): self.f.flush()
        def write(self, data):
            self.f.write(bytes(data)[:1000])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if ".last.pt.tmp" in str(file) and "w" in mode:
            last_writes.append(file)
            if len(last_writes) == 2:
                return FullDisk(f)
        return f
    builtins.open = open
""") + RUN_MAIN
NAN_WEIGHTS = textwrap.dedent("""
    import sys, torch
    from metarec.algos.maml import MAML
    real_step, calls = MAML.step, []
    def step(self, batch):  # step 10 (a validation step) leaves NaN weights behind a finite loss
        out = real_step(self, batch)
        calls.append(1)
        if len(calls) == 10:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return out
    MAML.step = step
""") + RUN_MAIN


@dataclass
class Case:
    args: list  # metarec's arguments
    message: str  # what the one error line must say
    code: int = 2
    inject: str | None = None  # run `python -c inject ...` instead of the console script
    env: dict = field(default_factory=dict)
    ml100k: bool = False
    after: str | None = None  # a case whose outputs this one needs


class Paths:
    def __init__(self, root: Path):
        self.root = root
        self.runs = root / "runs"
        self.marker = root / "marker"

    def run(self, name: str) -> Path:
        return self.runs / name

    def ck(self) -> Path:
        return self.run("ok") / "checkpoints" / "last.pt"


def cases(p: Paths) -> dict[str, Case]:
    ml = lambda root: [f"data.root={root}", *MOVIELENS]  # noqa: E731
    return {
        # ---- bad input -----------------------------------------------------------------------
        "folder_without_the_files": Case(["train", *ml(p.root / "stray")], "holds no MovieLens data (expected ml-100k (u.data, u.user, u.item)"),
        "malformed_rating_line": Case(["train", *ml(p.root / "malformed")], "u.data line 3 is malformed ('22\\t377\\tfive\\t878887116'; expected four tab-separated numbers: user, item, rating, timestamp)", ml100k=True),
        "rating_off_the_scale": Case(["train", *ml(p.root / "offscale")], "u.data line 4 has rating 7, off the 1-5 scale", ml100k=True),
        "shots_larger_than_users_have": Case(["train", *ml(ML100K), "data.shots=95"], "data.shots=95 is larger than any warm user has (at most 90 support ratings): use data.shots<=90", ml100k=True),
        "filter_leaves_no_user": Case(["train", *ml(ML100K), "data.min_ratings=1000", "data.max_ratings=2000"], "no meta-train user has 1000-2000 ratings on existing items", ml100k=True),
        "meta_batch_larger_than_users": Case(["train", *ml(ML100K), "trainer.meta_batch_size=5000"], "trainer.meta_batch_size=5000 is larger than the", ml100k=True),
        "unwritable_output_folder": Case(["train", *SINUSOID, f"hydra.run.dir={p.root / 'a_file.txt' / 'run'}"], f"cannot create the run folder {p.root / 'a_file.txt' / 'run'}: {p.root / 'a_file.txt'} is a file, not a folder"),
        "resume_path_that_does_not_exist": Case(["train", *SINUSOID, f"trainer.resume={p.root / 'nowhere.pt'}"], f"trainer.resume={p.root / 'nowhere.pt'}: no such checkpoint"),
        "full_trace_with_hydra_full_error": Case(["train", *ml(p.root / "malformed")], "u.data line 3 is malformed", code=1, env={"HYDRA_FULL_ERROR": "1"}, ml100k=True),
        # ---- faults while training -----------------------------------------------------------
        "nan_loss": Case(["train", *SINUSOID, "algo.meta_lr=1e30"], "the loss became nan at step 2: training stopped (no checkpoint was written yet): lower algo.meta_lr or algo.inner_lr"),
        "nan_weights_at_a_checkpoint": Case(["train", *SINUSOID], "the weights became nan or inf at step 10: training stopped without saving; the last good checkpoint is", inject=NAN_WEIGHTS),
        "disk_full_during_a_checkpoint": Case(["train", *SINUSOID], "(No space left on device): the previous last.pt is intact", inject=DISK_FULL),
        # ---- checkpoints ---------------------------------------------------------------------
        "ok": Case(["train", *SINUSOID], "", code=0),
        "crafted_checkpoint_eval": Case(["eval", f"checkpoint={p.root / 'evil.pt'}"], "was refused: it holds objects that could run code when loaded (Trying to load unsupported GLOBAL posix.system", after="ok"),
        "crafted_checkpoint_resume": Case(["train", *SINUSOID, f"trainer.resume={p.root / 'evil.pt'}"], "was refused: it holds objects that could run code", after="ok"),
        "truncated_checkpoint": Case(["eval", f"checkpoint={p.root / 'truncated.pt'}"], "is truncated (its zip directory is missing: a copy or a write that never finished)", after="ok"),
        "not_a_checkpoint": Case(["eval", f"checkpoint={ML100K / 'u.data'}"], "is not a torch file (it starts with b'196\\t'", after="ok", ml100k=True),
        "checkpoint_of_other_data_eval": Case(["eval", f"checkpoint={p.root / 'other_data.pt'}"], "was trained on other data than the sinusoid data this config loads (the data fingerprints differ)", after="ok"),
        "checkpoint_of_other_data_resume": Case(["train", *SINUSOID, f"trainer.resume={p.root / 'other_data.pt'}"], "was trained on other data (its data fingerprint differs from this data's)", after="ok"),
        "checkpoint_config_off_schema": Case(["eval", f"checkpoint={p.root / 'off_schema.pt'}"], "has a config that does not fit this metarec's schema (algo.inner_lr: Value 'fast' of type 'str' could not be converted to Float)", after="ok"),
    }


def make_inputs(p: Paths) -> None:
    """Bad copies of ml-100k and a stray folder; crafted checkpoints come after the `ok` run."""
    (p.root / "stray").mkdir()
    (p.root / "stray" / "notes.txt").write_text("not ratings\n")
    (p.root / "a_file.txt").write_text("a file where a folder should be\n")
    if not (ML100K / "u.data").exists():
        return
    lines = (ML100K / "u.data").read_text().splitlines(keepends=True)
    for name, lineno, fields in [("malformed", 3, "22\t377\tfive\t878887116\n"), ("offscale", 4, "244\t51\t7\t880606923\n")]:
        folder = p.root / name
        folder.mkdir()
        for other in ("u.user", "u.item"):
            (folder / other).symlink_to(ML100K / other)
        (folder / "u.data").write_text("".join(lines[: lineno - 1] + [fields] + lines[lineno:]))


class Crafted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def make_checkpoints(p: Paths) -> None:
    good = torch.load(p.ck(), weights_only=True)
    torch.save({**good, "model": Crafted(p.marker)}, p.root / "evil.pt")
    data = p.ck().read_bytes()
    (p.root / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({**good, "fingerprint": "0" * 64}, p.root / "other_data.pt")
    off = {**good, "config": {**good["config"], "algo": {**good["config"]["algo"], "inner_lr": "fast"}}}
    torch.save(off, p.root / "off_schema.pt")


def launch(name: str, case: Case, p: Paths) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **case.env}
    if "HYDRA_FULL_ERROR" not in case.env:
        env.pop("HYDRA_FULL_ERROR", None)
    args = [*case.args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={p.run(name)}")
    command = [sys.executable, "-c", case.inject, *args] if case.inject else [str(METAREC), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=p.root)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    p = Paths(tmp_path_factory.mktemp("faults"))
    make_inputs(p)
    todo = {n: c for n, c in cases(p).items() if not (c.ml100k and not (ML100K / "u.data").exists())}
    results = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = {n: pool.submit(launch, n, c, p) for n, c in todo.items() if c.after is None}
        results.update({n: f.result() for n, f in first.items()})
        if results["ok"].returncode == 0:
            make_checkpoints(p)
            later = {n: pool.submit(launch, n, c, p) for n, c in todo.items() if c.after is not None}
            results.update({n: f.result() for n, f in later.items()})
    return p, results


@pytest.mark.slow  # every fault case through the console script (the module fixture)
@pytest.mark.parametrize("name", [n for n, c in cases(Paths(Path("/x"))).items() if n != "ok"])
def test_one_clear_line(outcomes, name):
    p, results = outcomes
    case = cases(p)[name]
    if case.ml100k and not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is absent")
    if name not in results:
        pytest.fail(f"not run: the run it needs failed: {results['ok'].stderr[-2000:]}")
    r = results[name]
    assert r.returncode == case.code, r.stderr[-3000:]
    if case.env.get("HYDRA_FULL_ERROR") == "1":
        assert "Traceback" in r.stderr and "UserError: " + case.message in r.stderr.replace("metarec.errors.", "")
        return
    errors = [line for line in r.stderr.splitlines() if line.startswith("metarec: error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert case.message in errors[0], errors[0]
    CHECKS.get(name, lambda *_: None)(p, p.run(name), errors[0])


def check_no_checkpoint_damaged(last_good_step):
    def check(p, run, line):
        last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert last["step"] == last_good_step
        assert all(torch.isfinite(v).all() for v in last["model"].values())
        assert f"{run / 'checkpoints' / 'last.pt'}" in line
        assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp file
        status = read_json(run / "status.json")
        assert status["status"] == "failed" and status["reason"] in line
    return check


def check_nothing_saved(p, run, line):
    assert not (run / "checkpoints").exists()
    assert read_json(run / "status.json")["status"] == "failed"


def check_no_code_ran(p, run, line):
    assert not p.marker.exists()


CHECKS = {
    "nan_loss": check_nothing_saved,
    "nan_weights_at_a_checkpoint": check_no_checkpoint_damaged(5),
    "disk_full_during_a_checkpoint": check_no_checkpoint_damaged(5),
    "crafted_checkpoint_eval": check_no_code_ran,
    "crafted_checkpoint_resume": check_no_code_ran,
    "unwritable_output_folder": lambda p, run, line: None,
}


@pytest.mark.slow  # every fault case through the console script (the module fixture)
def test_the_crafted_checkpoint_is_a_real_exploit(outcomes, tmp_path):
    """Unrestricted loading runs the same file's code: the refusal above is what stopped it."""
    p, results = outcomes
    if not (p.root / "evil.pt").exists():
        pytest.fail("the crafted checkpoint was not made")
    assert not p.marker.exists()
    torch.load(p.root / "evil.pt", weights_only=False)
    assert p.marker.exists()


@pytest.mark.slow  # every fault case through the console script (the module fixture)
def test_status_json_records_each_outcome_for_report(outcomes):
    p, results = outcomes
    assert read_json(p.run("ok") / "status.json") == {"status": "finished", "reason": None, "step": 20}
    failed = read_json(p.run("malformed_rating_line") / "status.json") if (ML100K / "u.data").exists() else None
    if failed is not None:
        assert failed["status"] == "failed" and failed["reason"].startswith("u.data line 3 is malformed")
    from metarec.reporting.report import main as report_main
    assert report_main([str(p.runs), "--out", str(p.root / "report")]) == 0
    table = (p.root / "report" / "report.md").read_text()
    assert "| finished |" in table and "| failed |" in table and "the loss became nan at step 2" in table


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_really_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """The simulated full disk above, once more on a real 256 KiB file system."""
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mnt / "run"
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        # ~100 KB checkpoints: best.pt and last.pt of step 5 fit, a third file at step 10 does not
        r = subprocess.run([str(METAREC), "train", *SINUSOID, "model.hidden=[80,80]", f"hydra.run.dir={run}"],
                           env=env, capture_output=True, text=True, timeout=600)
        errors = [line for line in r.stderr.splitlines() if line.startswith("metarec: error: ")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert f"({os.strerror(errno.ENOSPC)}): the previous" in errors[0]
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 5
        assert not list((run / "checkpoints").glob(".*.tmp-*"))
        assert read_json(run / "status.json")["status"] == "failed"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
