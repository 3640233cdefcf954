import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

ML100K = SHARED / "data" / "ml-100k"
METAREC = Path(sys.executable).parent / "metarec"  # the installed console script


def needs_ml100k():
    return pytest.mark.skipif(not (ML100K / "u.data").exists(), reason="../shared/data/ml-100k is absent")


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real installed `metarec` console script; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(METAREC), *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def train_ml100k(run, *overrides, env, steps=20, val_every=10):
    """A short ml-100k run of the console script into `run` (one thread, on the CPU, no bars); fails the
    test with the end of its stderr when it does not exit 0."""
    r = run_cli("train", *overrides, f"data.root={ML100K}", f"trainer.max_steps={steps}", f"trainer.val_every={val_every}",
                "trainer.progress=false", "device=cpu", "device.threads=1", f"hydra.run.dir={run}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def read_json(path):
    return json.loads(Path(path).read_text())


def pytest_configure(config):
    """Under pytest-xdist (`make test`: two workers on two cores) each worker's torch takes one thread:
    two workers with a thread per core each would preempt each other's thread pools."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def floor_cache_dir(tmp_path_factory):
    """The MF floors' cache of this test session (metarec/data/floor_cache.py): never the user's."""
    folder, before = tmp_path_factory.mktemp("floors"), os.environ.get("METAREC_FLOOR_CACHE")
    os.environ["METAREC_FLOOR_CACHE"] = str(folder)
    yield folder
    os.environ.pop("METAREC_FLOOR_CACHE") if before is None else os.environ.update(METAREC_FLOOR_CACHE=before)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty cache dir so no test reads or writes the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("METAREC_CACHE", str(cache))
    return {"METAREC_CACHE": str(cache)}


@pytest.fixture
def one_thread():
    """Torch on one thread during the test, then as before: the oracle tests' graphs of tiny ops ran
    about 30x slower on two threads of the loaded 2-core machine (1.8 s against 0.05 s a case)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_loss_and_gradients(ours, ref, params, atol=1e-10):
    """A vectorised loss equals its per-task reference loop, and so do their gradients on `params`."""
    import torch
    assert torch.allclose(ours, ref, atol=atol, rtol=0)
    for a, b in zip(torch.autograd.grad(ours, params, retain_graph=True), torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, atol=atol, rtol=0)


# A child that stops itself (SIGSTOP) right after it first puts a file of this name in place with
# os.replace (checkpoints are written so), or, with the value "SIGTERM:N", right after it takes SIGTERM
# over for the N-th time (the console script's entry is the first, the command the second): the test
# then holds it alive for as long as it needs, sends what it wants and lets it go on with SIGCONT,
# whatever the machine's speed. Loaded by Python's site machinery from PYTHONPATH
# into the real console script; it does nothing without the variable.
PAUSE_HOOK = '''
import os, signal
_replace, _done = os.replace, []
def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if not _done and os.path.basename(os.fspath(dst)) == os.environ.get("METAREC_TEST_PAUSE_AFTER"):
        _done.append(dst)
        os.kill(os.getpid(), signal.SIGSTOP)
os.replace = replace
_signal, _taken = signal.signal, []
def take_over(signum, handler):
    old = _signal(signum, handler)
    want = os.environ.get("METAREC_TEST_PAUSE_AFTER", "")
    if not _done and signum == signal.SIGTERM and callable(handler) and want.startswith("SIGTERM"):
        _taken.append(signum)
        if len(_taken) == int(want.partition(":")[2] or 1):
            _done.append(signum)
            os.kill(os.getpid(), signal.SIGSTOP)
    return old
signal.signal = take_over
'''


def pause_env(tmp_path, after="last.pt"):
    """Environment for a child that pauses itself after its first `after` is in place (see PAUSE_HOOK)."""
    hook = tmp_path / "pause-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
            "METAREC_TEST_PAUSE_AFTER": after}


def wait_paused(proc, timeout=300):
    """Until `proc` has stopped itself (state T in /proc); fails with its stderr if it exits first."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "T":
            return
        assert time.monotonic() < deadline, f"pid {proc.pid} never paused"
        time.sleep(0.02)


def read_until(stream, token, timeout=300):
    """Read a child's binary pipe until `token` appears, with a deadline (a plain read blocks forever
    when the child hangs); returns what was read. Fails when the pipe closes or the deadline passes."""
    import selectors
    import time
    deadline, seen = time.monotonic() + timeout, b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while token not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"no {token!r} within {timeout} s; read: {seen[-3000:]!r}"
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"the pipe closed before {token!r}; read: {seen[-3000:]!r}"
            seen += chunk
    return seen
