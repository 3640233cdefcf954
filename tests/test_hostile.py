"""Hostile inputs and faults, through the installed console script: paths that are not regular files or not
text (a real FIFO, /dev/zero, random bytes), messages that name the right cause, damaged caches with no
network, a SIGTERM in the middle of a long evaluation chunk, and damaged run folders for `metarec report`."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from conftest import METAREC, ML100K, SHARED, needs_ml100k, pause_env, run_cli, wait_paused

from metarec.signals import GRACE_S, Interrupted, SignalCatcher, check_stop

ML1M = SHARED / "data" / "ml-1m"
RATINGS = "item_id,rating\n50,5\n181,4\n1,3\n121,2\n"
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "no_proxy": "", "NO_PROXY": ""}  # nothing reachable


def one_error_line(r, *phrases):
    """Exit 2 and a stderr whose only line is metarec's error, holding every phrase."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("metarec: error: "), r.stderr[-2000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def hostile(tmp_path):
    """A FIFO, random bytes, latin-1 text, a folder: paths a user may pass where a text file is expected."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "random.csv").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "latin1.csv").write_bytes("item_id,rating\n50,5\n# caf\u00e9\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("name, says", [
    ("/dev/zero", "is a character device, not a regular file"),
    ("fifo", "is a FIFO (named pipe), not a regular file"),
    ("random.csv", "is a binary file, not text (byte 0x00 on line 1)"),
    ("latin1.csv", "is not UTF-8 text (byte 0xe9 on line 3"),
    ("folder", "is a folder, not a regular file"),
])
def test_a_ratings_file_that_is_not_a_text_file_is_named_at_once(hostile, name, says):
    path = name if name.startswith("/") else hostile / name
    r = run_cli("recommend", "checkpoint=nowhere.pt", f"ratings={path}", timeout=60)  # /dev/zero and a FIFO never hang
    one_error_line(r, f"ratings file {path} {says}", "ratings=FILE")


def test_a_ratings_file_over_the_bound_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:  # sparse: 65 MiB that take no disk
        f.truncate(65 << 20)
    r = run_cli("recommend", "checkpoint=nowhere.pt", f"ratings={big}", timeout=60)
    one_error_line(r, f"ratings file {big} is too large (65.0 MiB; at most 64.0 MiB is read)")


@pytest.mark.parametrize("name, says", [("/dev/zero", "a character device"), ("fifo", "a FIFO (named pipe)")])
def test_a_checkpoint_that_is_not_a_file_is_named_not_called_missing(hostile, name, says):
    path = name if name.startswith("/") else hostile / name
    r = run_cli("eval", f"checkpoint={path}", f"hydra.run.dir={hostile / 'eval'}", timeout=120)
    one_error_line(r, f"checkpoint {path} is {says}, not a regular file")
    (hostile / "r.csv").write_text(RATINGS)
    r = run_cli("recommend", f"checkpoint={path}", f"ratings={hostile / 'r.csv'}", timeout=120)
    one_error_line(r, f"checkpoint {path} is {says}, not a regular file")


def train_fails(tmp_path, *overrides, env=None):
    """A train run that must be refused before anything is trained."""
    run = tmp_path / "run"
    r = run_cli("train", *overrides, "trainer.max_steps=2", "trainer.progress=false", "device=cpu",
                f"hydra.run.dir={run}", env=env, timeout=300)
    assert not (run / "checkpoints").exists() and not (run / "eval.json").exists()  # nothing trained
    return r


@needs_ml100k()
@pytest.mark.parametrize("damage, says", [
    ("root_is_dev_zero", "data.root=/dev/zero is a character device, not a folder"),
    ("u.data_fifo", "u.data is a FIFO (named pipe), not a regular file"),
    ("u.item_binary", "u.item is a binary file, not text"),
])
def test_movielens_files_that_are_not_text_files_are_named(tmp_path, damage, says):
    root = tmp_path / "ml"
    root.mkdir()
    for name in ("u.data", "u.user", "u.item"):
        shutil.copy(ML100K / name, root / name)
    if damage == "u.data_fifo":
        (root / "u.data").unlink()
        os.mkfifo(root / "u.data")
    if damage == "u.item_binary":
        (root / "u.item").write_bytes(bytes(range(256)) * 4)
    r = train_fails(tmp_path, "data.root=/dev/zero" if damage == "root_is_dev_zero" else f"data.root={root}")
    one_error_line(r, says)


def test_omniglot_zips_and_roots_that_are_not_files_or_folders_are_named(tmp_path):
    os.mkfifo(tmp_path / "images_background.zip")
    (tmp_path / "images_evaluation.zip").write_bytes(b"PK")
    one_error_line(train_fails(tmp_path, "data=omniglot", f"data.root={tmp_path}"),
                   f"Omniglot zip {tmp_path / 'images_background.zip'} is a FIFO (named pipe), not a regular file")
    one_error_line(train_fails(tmp_path, "data=omniglot", "data.root=/dev/zero"),
                   "data.root /dev/zero is a character device, not a folder")


@pytest.mark.parametrize("inter, says", [
    ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n", "is empty: it has a header but no interactions"),
    ("", "is empty (not even a header line)"),
    (None, "is a FIFO (named pipe), not a regular file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is a binary file, not text"),
])
def test_atomic_files_that_are_empty_or_not_text_say_so(tmp_path, inter, says):
    root = tmp_path / "atomic"
    root.mkdir()
    path = root / "x.inter"
    if inter is None:
        os.mkfifo(path)
    else:
        path.write_bytes(inter if isinstance(inter, bytes) else inter.encode())
    line = one_error_line(train_fails(tmp_path, "data=atomic", f"data.root={root}"), says)
    assert "quantile" not in line  # the old message blamed data.cut on an empty file


@needs_ml100k()
def test_a_cut_that_leaves_no_existing_item_says_so_not_loosen_the_filter(tmp_path):
    r = train_fails(tmp_path, f"data.root={ML100K}", "data.cut_year=1000")
    one_error_line(r, "only 9 of 100,000 ratings are on existing items", "move the cut")


@pytest.mark.parametrize("arg, says", [("top_k=-3", "top_k=-3 is negative"), ("threads=0", "threads=0 is zero"),
                                       ("top_k=ten", "top_k='ten' is not a whole number")])
def test_negative_and_zero_counts_of_recommend_are_called_so(tmp_path, arg, says):
    (tmp_path / "r.csv").write_text(RATINGS)
    one_error_line(run_cli("recommend", "checkpoint=x.pt", f"ratings={tmp_path / 'r.csv'}", arg, timeout=60), says)


# --- damaged caches with no network ---------------------------------------------------------------


def ml100k_cut(folder):
    for name in ("u.user", "u.item"):
        shutil.copy(ML100K / name, folder / name)
    lines = (ML100K / "u.data").read_bytes().splitlines(True)
    (folder / "u.data").write_bytes(b"".join(lines[:50_177]))


def ml1m_cut(folder):
    for name in ("users.dat", "movies.dat"):
        shutil.copy(ML1M / name, folder / name)
    with open(ML1M / "ratings.dat", "rb") as f:
        (folder / "ratings.dat").write_bytes(b"".join(next(f) for _ in range(20_000)))


def recbole_copy_changed(folder):  # the mirror's atomic files, one of them not the wheel's
    header = {"inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t0\n",
              "user": "user_id:token\tage:token\n1\t20\n", "item": "item_id:token\tmovie_title:token_seq\n1\tx\n"}
    for ext, text in header.items():
        (folder / f"ml-100k.{ext}").write_text(text)


@pytest.mark.parametrize("variant, damage, bad", [
    ("ml-100k", ml100k_cut, "u.data"),
    ("ml-1m", ml1m_cut, "ratings.dat"),
    ("ml-100k", recbole_copy_changed, "ml-100k.inter"),
])
def test_a_damaged_cache_with_no_network_is_refused_and_nothing_is_trained(tmp_path, variant, damage, bad):
    if not (ML100K / "u.data").exists() or (variant == "ml-1m" and not (ML1M / "ratings.dat").exists()):
        pytest.skip("../shared/data lacks the data set")
    cached = tmp_path / "cache" / variant
    cached.mkdir(parents=True)
    damage(cached)
    before = {p.name: p.read_bytes() for p in cached.iterdir()}
    (tmp_path / "no-wheels").mkdir()
    env = {**OFFLINE, "METAREC_CACHE": str(tmp_path / "cache"), "PIP_FIND_LINKS": str(tmp_path / "no-wheels")}
    r = train_fails(tmp_path, f"data.variant={variant}", env=env)
    line = one_error_line(r, f"the cached {variant} in {cached} is damaged", bad, "fetching it again failed",
                          "network", f"data.root=/path/to/{variant}")
    assert "nothing was run on it" in line
    assert {p.name: p.read_bytes() for p in cached.iterdir()} == before  # kept as it was: nothing lost
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [variant]


# --- stops --------------------------------------------------------------------------------------------


def test_check_stop_takes_a_deferred_stop_in_an_evaluation_only():
    catcher = SignalCatcher("eval")
    try:
        check_stop()  # nothing asked: nothing happens
        catcher.caught = signal.SIGTERM
        with pytest.raises(Interrupted) as stop:
            check_stop()
        assert stop.value.phase == "eval" and stop.value.signum == signal.SIGTERM
        catcher.phase = "train"  # a training step finishes first: the loop saves last.pt, then stops
        check_stop()
    finally:
        catcher.restore()
    check_stop()  # no catcher: a no-op


def test_restore_ends_the_watchdog_thread_even_inside_its_grace_period():
    """A daemon watchdog still alive when the interpreter finalizes woke there and aborted the process
    ("terminate called without an active exception", exit -6) after an error exit, 1 in 16-30 runs."""
    before = {t.name for t in threading.enumerate()}
    catcher = SignalCatcher("eval")
    assert "metarec-stop-watchdog" in {t.name for t in threading.enumerate()} - before
    os.kill(os.getpid(), signal.SIGTERM)  # the watchdog wakes and waits its grace period; the handler records it
    started = time.monotonic()
    catcher.restore()
    assert not catcher._thread.is_alive()
    assert time.monotonic() - started < GRACE_S  # restore woke it: it did not sit out the grace period
    assert catcher.caught == signal.SIGTERM


MAML = ["algo=maml", "data.item_stats=false", "trainer.max_steps=2", "trainer.val_every=2", "trainer.meta_batch_size=4",
        "eval.max_steps=1", "trainer.progress=false", "device=cpu", "device.threads=1"]


@pytest.fixture(scope="module")
def maml_ckpt(tmp_path_factory):
    if not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is absent")
    run = tmp_path_factory.mktemp("hostile") / "run"
    r = run_cli("train", f"data.root={ML100K}", *MAML, f"hydra.run.dir={run}", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return run / "checkpoints" / "best.pt"


@pytest.mark.slow
def test_age_minus_four_is_called_negative(maml_ckpt, tmp_path):
    (tmp_path / "r.csv").write_text(RATINGS)
    r = run_cli("recommend", f"checkpoint={maml_ckpt}", f"ratings={tmp_path / 'r.csv'}", "age=-4", "threads=1", timeout=300)
    one_error_line(r, "age=-4 is negative")


@pytest.mark.slow
def test_sigterm_inside_a_long_evaluation_chunk_stops_within_seconds(maml_ckpt, tmp_path):
    """eval.max_steps=5000: one chunk of tasks takes minutes, and Python runs no handler inside torch's calls;
    the stop must not wait for the chunk."""
    run = tmp_path / "eval"
    p = subprocess.Popen([str(METAREC), "eval", f"checkpoint={maml_ckpt}", "eval.max_steps=5000", "device.threads=1",
                          "trainer.progress=true", f"hydra.run.dir={run}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, err = threading.Event(), []

    def read():
        while chunk := os.read(p.stderr.fileno(), 4096):
            err.append(chunk.decode(errors="replace"))
            if "evaluate" in "".join(err):  # the evaluation's bar: the first chunk is under way
                seen.set()
    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(300), "".join(err)[-2000:]
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = p.wait(timeout=60)  # the chunk alone takes minutes
    finally:
        p.kill()
    took = time.monotonic() - sent
    assert code == 128 + signal.SIGTERM and took < 60
    assert "stopped before the evaluation of" in "".join(err)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and not (run / "eval.json").exists()


# --- metarec report on damaged run folders -------------------------------------------------------------


def run_folder(path, status, metrics, eval_json=True):
    path.mkdir(parents=True)
    (path / "status.json").write_text(status)
    (path / "metrics.jsonl").write_text(metrics)
    if eval_json:
        state = {"n_tasks": 3, "headline_step": "1", "steps": {"0": {"mae": 0.9}, "1": {"mae": 0.8}}}
        (path / "eval.json").write_text(json.dumps({"states": {"user_cold": state}}))


def test_report_names_what_it_could_not_read_and_how_it_counted_each_run(tmp_path):
    good = '{"step": 10, "split": "val", "mae": 0.8}\n'
    run_folder(tmp_path / "sweep" / "0", "\x00garbage{", good + '{"step": 20, "spl')
    run_folder(tmp_path / "sweep" / "1", '{"status": "finished", "step": 20}', good, eval_json=False)
    run_folder(tmp_path / "sweep" / "2", '{"status": "finished", "step": 20}', good)
    r = run_cli("report", tmp_path / "sweep", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("metarec report: 0: status.json unreadable") and "metrics.jsonl's last line (2) is torn" in lines[0]
    assert lines[0].endswith("counted as finished (its eval.json has results)")
    assert lines[1].startswith("metarec report: 1: no eval.json (status.json says finished)")
    assert lines[1].endswith("counted as unfinished")
    assert "3 runs: 2 finished, 1 unfinished" in r.stdout


def stop_paused(tmp_path, command, takeover):
    """Run the console script until it pauses itself at its `takeover`-th SIGTERM handler, send SIGTERM,
    let it go on: its exit code and stderr lines."""
    proc = subprocess.Popen([str(METAREC), *command], cwd=tmp_path,
                            env={**os.environ, **pause_env(tmp_path, f"SIGTERM:{takeover}")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_paused(proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err.strip().splitlines()


@pytest.mark.parametrize("command", [["recommend", "checkpoint=x.pt", "ratings=r.csv"], ["report", "."],
                                     ["data", "info", "data=sinusoid"]])
def test_sigterm_stops_a_plain_command_with_one_line(tmp_path, command):
    """recommend, report, results, bench and data info have no run to save: a stop ends them with one line
    and 143, not silently. The child pauses itself once the command has taken SIGTERM over (the entry's
    takeover is the first), so the signal lands in the command whatever the machine's speed."""
    code, lines = stop_paused(tmp_path, command, 2)
    assert (code, lines) == (143, [f"metarec: SIGTERM: {command[0]} stopped before it finished"])


def test_sigterm_while_the_console_script_imports_its_modules_is_one_line(tmp_path):
    """The entry takes SIGINT / SIGTERM over before Hydra and torch are imported: a stop there is one line."""
    code, lines = stop_paused(tmp_path, ["report", "."], 1)
    assert (code, lines) == (143, ["metarec: SIGTERM: stopped before it started"])
