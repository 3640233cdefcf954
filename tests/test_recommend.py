"""`metarec recommend` (the installed console script) and `metarec.load` on a tiny ridge checkpoint
trained on real ml-100k: the output, bad input as one line, and adaptation equal to evaluation's."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ML100K, needs_ml100k, run_cli

import metarec
from metarec.errors import UserError
from metarec.serve.recommend import read_ratings

TINY = ["algo=ridge", "data.item_stats=false", "data.item_factors=2", "trainer.max_steps=10", "trainer.val_every=10",
        "trainer.meta_batch_size=8", "trainer.progress=false", "device=cpu", "device.threads=1", "eval.max_steps=1"]
RATINGS = "item_id,rating\n50,5\n181,4\n1,3\n121,2\n"  # ml-100k: Star Wars, Return of the Jedi, Toy Story, ...


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    if not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is absent")
    run = tmp_path_factory.mktemp("rec") / "run"
    env = {"METAREC_CACHE": str(run.parent / "cache")}
    r = run_cli("train", f"data.root={ML100K}", *TINY, f"hydra.run.dir={run}", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def rec(ckpt):
    return metarec.load(ckpt)


def write(tmp_path, text, name="r.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_import_metarec_stays_light():
    r = subprocess.run([sys.executable, "-c", "import metarec, sys; print('torch' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


@needs_ml100k()
@pytest.mark.slow
def test_console_script_prints_a_table_and_json(ckpt, tmp_path):
    ratings = write(tmp_path, RATINGS)
    r = run_cli("recommend", f"checkpoint={ckpt}", f"ratings={ratings}", "top_k=5", "gender=F", "age=30", "threads=1")
    assert r.returncode == 0, r.stderr
    assert "top 5 of" in r.stdout and "adapt + rank:" in r.stdout
    assert len([line for line in r.stdout.splitlines() if line[:4].strip().isdigit()]) == 5
    r = run_cli("recommend", f"checkpoint={ckpt}", f"ratings={ratings}", "--json", "threads=1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["top"]) == 10 and out["rated"] == 4 and out["algo"] == "ridge"
    ids = [t["item_id"] for t in out["top"]]
    assert not {50, 181, 1, 121} & set(ids)
    scores = [t["predicted_rating"] for t in out["top"]]
    assert scores == sorted(scores, reverse=True)
    assert all(t["title"] for t in out["top"]) and out["seconds"]["adapt_rank"] >= 0


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("item_id,rating\n", "has a header but no ratings"),
    ("movie,score\n50,5\n", "line 1: the header 'movie,score' names no item column"),
    ("item_id,rating\n50,5\n181\n", "line 3: 1 fields where the header has 2"),
    ("item_id,rating\n50,five\n", "line 2: rating 'five' is not a number"),
])
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as e:
        read_ratings(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if text == "":  # the console script says it in one line (it reads the file before the checkpoint)
        r = run_cli("recommend", "checkpoint=nowhere.pt", f"ratings={path}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr


def test_bad_arguments_are_one_line(tmp_path):
    r = run_cli("recommend", "checkpoint=x.pt")
    assert r.returncode == 2 and "needs ratings=" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("recommend", "checkpoint=x.pt", "ratings=r.csv", "topk=3")
    assert r.returncode == 2 and "'topk=3' is not an argument" in r.stderr


@needs_ml100k()
@pytest.mark.slow
@pytest.mark.parametrize("text, message", [
    ("item_id,rating\n50,5\n99999,4\n", "line 3: item 99999 is not in the data set"),
    ("item_id\trating\n50\t6\n", "line 2: rating 6 is off the data set's 1-5 scale"),
    ("item_id,rating\n50,5\n50,4\n", "line 3: item 50 is rated twice"),
])
def test_unknown_items_and_off_scale_ratings_are_one_line(ckpt, rec, tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message):
        rec.adapt(read_ratings(path))
    if "99999" in text:  # the console script says the same in one line
        r = run_cli("recommend", f"checkpoint={ckpt}", f"ratings={path}", "threads=1")
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


@needs_ml100k()
@pytest.mark.slow
def test_load_adapt_recommend_predict(rec):
    user = rec.adapt([(50, 5), (181, 4), (1, 3), (121, 2)], user={"gender": "M", "occupation": "student"})
    top = user.recommend(20)
    assert len(top) == 20 and not {50, 181, 1, 121} & {t.item_id for t in top}
    scores = [t.predicted_rating for t in top]
    assert scores == sorted(scores, reverse=True)
    assert rec.recommend(20) == top  # the object from load() answers for the last adapted user
    best_unrated = max(float(s) for r, s in enumerate(user.scores) if r not in set(user.rated) and rec.catalogue[r])
    assert scores[0] == pytest.approx(best_unrated, abs=1e-4)
    assert user.predict([top[0].item_id, 50]) == pytest.approx([top[0].predicted_rating, float(user.scores[49])], abs=1e-4)
    as_dict = rec.adapt({50: 5, 181: 4, 1: 3, 121: 2}, user={"gender": "M", "occupation": "student"})
    assert torch.equal(as_dict.scores, user.scores)
    with pytest.raises(UserError, match="no ratings given"):
        rec.adapt([])
    with pytest.raises(UserError, match="occupation='astronaut' is not in the data set's user table"):
        rec.adapt([(50, 5)], user={"occupation": "astronaut"})


@needs_ml100k()
@pytest.mark.slow
def test_adapt_reads_a_pandas_data_frame(rec):
    pandas = pytest.importorskip("pandas")  # a caller's DataFrame (pandas is not a dependency of metarec)
    frame = pandas.DataFrame({"item_id": [50, 181, 1, 121], "rating": [5.0, 4.0, 3.0, 2.0]})
    user = {"gender": "M", "occupation": "student"}
    assert torch.equal(rec.adapt(frame, user=user).scores, rec.adapt([(50, 5), (181, 4), (1, 3), (121, 2)], user=user).scores)


@needs_ml100k()
@pytest.mark.slow
def test_adapt_equals_the_evaluation_of_the_same_support_set(rec):
    """A user_cold user's support set given to adapt() predicts that user's query items as evaluation does."""
    from metarec.data import build_source
    from metarec.evaluation.evaluate import eval_steps

    # the evaluation's own source (it fits the item factors; load() took them from the checkpoint)
    source = build_source(rec.cfg.data, torch.device("cpu"), rec.cfg.seed, progress=False)
    raw = source.raw
    batch = source.eval_tasks("test")["user_cold"]
    t = source.tasks["user_cold"]
    steps = eval_steps(rec.cfg)
    want = rec.algo.adapt_trace(batch, steps, at=[steps])[-1]
    for i in range(0, len(t.users), 23):
        u = int(t.users[i])
        s, q = t.support[i][t.support_mask[i].bool()], t.query[i][t.query_mask[i].bool()]
        ratings = [(int(raw.item_id[source.rating_item[r]]), float(source.y[r])) for r in s]
        features = {"gender": raw.user_gender[u], "age": int(raw.user_age[u]),
                    "occupation": raw.user_occupation[u], "zip": raw.user_zip[u]}
        got = rec.adapt(ratings, user=features).predict([int(raw.item_id[source.rating_item[r]]) for r in q])
        assert got == pytest.approx(want[i, :len(q)].tolist(), abs=1e-4)
