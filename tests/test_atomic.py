"""data=atomic: any RecBole atomic data set. ml-100k written as atomic files gives data=movielens' tasks
and floors bit for bit; a data set no reader ships trains end to end; bad files are one clear line."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k, read_json, run_cli

from metarec.data.movielens_features import AGE_EDGES, year_edges
from metarec.data.movielens_io import ML100K_GENRES, title_year
from metarec.errors import UserError

STATES = ("warm", "user_cold", "item_cold", "user_item_cold")


# ----------------------------------------------------------------------------- ml-100k as atomic files

def write_ml100k_atomic(grouplens: Path, folder: Path) -> Path:
    """ml-100k as the atomic data set `ml` with MovieLens' features as data=movielens derives them: the
    title's year (empty when it has none), the first zip character ("x" when not a digit), genres."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + (grouplens / "u.data").read_text())
    users = []
    for line in (grouplens / "u.user").read_text().splitlines():
        uid, age, gender, occupation, zipcode = line.split("|")
        users.append(f"{uid}\t{age}\t{gender}\t{occupation}\t{zipcode[:1] if zipcode[:1].isdigit() else 'x'}")
    (folder / "ml.user").write_text("user_id:token\tage:float\tgender:token\toccupation:token\tzip:token\n"
                                    + "\n".join(users) + "\n")
    items = []
    for line in (grouplens / "u.item").read_text(encoding="latin-1").splitlines():
        p = line.split("|")
        year = title_year(p[1])
        genres = " ".join(g for g, flag in zip(ML100K_GENRES, p[5:]) if flag == "1")
        items.append(f"{p[0]}\t{year if year >= 0 else ''}\t{genres}")
    (folder / "ml.item").write_text("item_id:token\tyear:float\tgenre:token_seq\n" + "\n".join(items) + "\n")
    return folder


def ml100k_overrides(folder: Path) -> list[str]:
    """data=atomic with the feature and cut config that make MovieLens' features (cut 1996: ml-100k's)."""
    return ["data=atomic", f"data.root={folder}", "data.user_features=[gender,age,occupation,zip]",
            "data.item_features=[year,genre]", "data.token_vocab={gender:[M,F]}",
            f"data.float_edges={{age:{AGE_EDGES},year:{year_edges(1996)}}}".replace(" ", ""),
            "data.cut.field=year", "data.cut.value=1996"]


def source(*overrides):
    from metarec.config.compose import compose
    from metarec.run.train import build_source
    return build_source(compose(list(overrides)).data, torch.device("cpu"), 0, progress=False)


def everything(src) -> dict:
    """What a run reads from a source: inputs, tasks, evaluation batches, floors, spec, an episode."""
    out = {"fields": src.fields, "x": src.x, "y": src.y, "mu": src.mu, "user_role": src.user_role,
           "pool": src.pool, "spec": src.model_spec(), "new_item": src.new_item}
    for state, t in src.tasks.items():
        out[state] = [t.users, t.support, t.support_mask, t.query, t.query_mask]
        out[f"{state} floors"] = src.floors(state)
    for split in ("val", "test"):
        for state, b in src.eval_tasks(split).items():
            out[f"{state} batch"] = [b.support_x, b.support_y, b.support_mask, b.query_x, b.query_y, b.query_mask]
    episode = src.sample_train(16, torch.Generator().manual_seed(0))
    out["episode"] = [episode.support_x, episode.support_y, episode.query_x, episode.query_y]
    return out


def assert_equal(a, b, path=""):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            assert_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)) and a and isinstance(a[0], (torch.Tensor, np.ndarray, dict, list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def ml100k_atomic(tmp_path_factory):
    return write_ml100k_atomic(ML100K, tmp_path_factory.mktemp("atomic") / "ml")


@pytest.mark.slow  # ml-100k as atomic files, built with every floor
@needs_ml100k()
@pytest.mark.parametrize("preset", [[], pytest.param(["data.split=[0.6,0.2,0.2]", "data.heavy_users=true", "data.item_ids=true"],
                                                    marks=pytest.mark.slow)], ids=["default", "preset"])
def test_ml100k_as_atomic_files_gives_movielens_tasks_and_floors(ml100k_atomic, preset):
    movielens = source("data=movielens", f"data.root={ML100K}", "data.split=[0.7,0.1,0.2]", "data.heavy_users=false",
                       *preset)  # the protocol's schema defaults, which data=atomic has (data=movielens: tuned MAML's)
    atomic = source(*ml100k_overrides(ml100k_atomic), *preset)
    a, b = everything(movielens), everything(atomic)
    assert_equal(a, b)
    assert set(a["user_cold floors"]) >= {"bias", "bias_transductive", "mf_foldin", "mf_transductive"}
    assert atomic.info()["states"] == movielens.info()["states"]
    assert atomic.info()["new_item_ratings"] == movielens.info()["new_item_ratings"]


@needs_ml100k()
def test_recboles_own_ml100k_copy_gives_movielens_tasks(tmp_path):
    """RecBole's ml-100k layout (age:token, release_year:token with "unkonwn" and "V"): the cut reads
    release_year as a number where it is one, and the tasks are data=movielens' (the features differ:
    zip_code is the whole code here)."""
    from test_movielens_copies import write_recbole_ml100k
    folder = write_recbole_ml100k(ML100K, tmp_path / "ml-100k")
    movielens = source("data=movielens", f"data.root={folder}", "data.split=[0.7,0.1,0.2]", "data.heavy_users=false")
    atomic = source("data=atomic", f"data.root={folder}", "data.user_features=[age,gender,occupation,zip_code]",
                    "data.item_features=[class]", f"data.float_edges={{age:{AGE_EDGES}}}".replace(" ", ""),
                    "data.cut.field=release_year", "data.cut.value=1996")
    assert np.array_equal(atomic.new_item, movielens.new_item) and torch.equal(atomic.y, movielens.y)
    for state, t in movielens.tasks.items():
        u = atomic.tasks[state]
        assert np.array_equal(t.users, u.users) and torch.equal(t.support, u.support) and torch.equal(t.query, u.query)
    assert dict(atomic.fields)["age"] == dict(movielens.fields)["age"] and atomic.multi_hot == [("class", 19)] == [
        ("class", width) for _, width in movielens.multi_hot]  # the same 19 genres
    assert torch.equal(atomic.x[:, 0], movielens.x[:, 1])  # age: the same buckets
    assert torch.equal(atomic.x[:, -19:], movielens.x[:, -19:])  # and the same genre flags


@needs_ml100k()
def test_data_info_lists_the_fields_and_the_cut(ml100k_atomic):
    r = run_cli("data", "info", *ml100k_overrides(ml100k_atomic)[:2], "data.cut.quantile=0.9", "data.cut.field=timestamp")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ratings"] == 100_000 and info["users"] == 943 and info["items"] == 1682
    assert info["user_fields"] == {"user_id": "token", "age": "float", "gender": "token", "occupation": "token",
                                   "zip": "token"}
    assert info["cut"]["field"] == "timestamp" and set(info["states"]) == {*STATES, "val", "val_new"}
    assert info["features"]["multi_hot"] == [] and [f[0] for f in info["features"]["fields"]] == ["item_bias", "item_count"]


def test_the_protocol_keys_are_movielens_ones():
    from metarec.config.schema import MovieLensConfig
    from metarec.data.atomic_config import AtomicConfig
    movielens = {f.name: f for f in dataclasses.fields(MovieLensConfig)}
    shared = [f for f in dataclasses.fields(AtomicConfig) if f.name in movielens and f.name not in ("name", "root")]
    from metarec.data.protocol_config import ProtocolConfig
    assert len(shared) == len(dataclasses.fields(ProtocolConfig)) == 24
    for f in shared:
        m = movielens[f.name]
        assert (f.default, f.default_factory() if f.default_factory is not dataclasses.MISSING else None) == \
            (m.default, m.default_factory() if m.default_factory is not dataclasses.MISSING else None), f.name


# ----------------------------------------------------------------------------- a data set no reader ships

def write_synthetic(folder: Path, n_users=90, n_items=120, per_user=30, seed=0) -> Path:
    """`shop`: users with a region (token), a spend (float) and interests (token_seq); items with a
    price (float), tags (token_seq) and variant sizes (float_seq). An item's first sale is near
    100 * its id, so a timestamp cut makes the last items new."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["uid:token\tiid:token\tstars:float\tts:float"]
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            lines.append(f"c{u}\tp{i}\t{rng.integers(1, 6)}\t{100 * i + rng.integers(0, 50)}")
    (folder / "shop.inter").write_text("\n".join(lines) + "\n")
    users = ["uid:token\tregion:token\tspend:float\tinterests:token_seq"]
    users += [f"c{u}\t{rng.choice(['north', 'south', 'east'])}\t{rng.uniform(0, 500):.2f}\t"
              f"{' '.join(rng.choice(['books', 'garden', 'games', 'music'], size=2, replace=False))}" for u in range(n_users)]
    (folder / "shop.user").write_text("\n".join(users) + "\n")
    items = ["iid:token\tprice:float\ttags:token_seq\tsizes:float_seq"]
    items += [f"p{i}\t{rng.uniform(1, 90):.2f}\t{' '.join(rng.choice(['red', 'blue', 'new', 'sale'], size=2))}\t"
              f"{' '.join(str(s) for s in rng.integers(30, 50, size=rng.integers(1, 4)))}" for i in range(n_items)]
    (folder / "shop.item").write_text("\n".join(items) + "\n")
    return folder


SHOP = ["data=atomic", "data.user_id_field=uid", "data.item_id_field=iid", "data.rating_field=stars",
        "data.time_field=ts", "data.user_features=[region,spend,interests]", "data.item_features=[price,tags,sizes]",
        "data.cut.field=ts", "data.cut.quantile=0.75", "data.float_buckets=4", "data.min_ratings=5",
        "data.query_size=3", "data.rating_scale=[1,5]"]


def test_synthetic_features_and_cut(tmp_path):
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}")
    assert [name for name, _ in src.fields] == ["region", "spend", "price", "item_bias", "item_count"]
    assert dict(src.fields)["region"] == 4 and dict(src.fields)["spend"] == 5 and dict(src.fields)["price"] == 5  # 4 buckets + missing
    assert [name for name, _ in src.multi_hot] == ["interests", "tags", "sizes"] and src.rating_scale == (1.0, 5.0)
    assert src.model_spec()["multi_hot"][:2] == [["interests", 4], ["tags", 4]]
    # the cut: items whose first sale is after the 0.75 quantile of first sales (the last quarter of ids)
    first = np.full(src.raw.num_items, np.inf)
    np.minimum.at(first, src.raw.rating_item, src.raw.timestamp.astype(float))
    assert np.array_equal(src.new_item, first > np.quantile(first, 0.75)) and 0.2 < src.new_item.mean() < 0.3
    # x of a rating: [region, spend, price, interests (4), tags (4), sizes (4 buckets)]; the item's row for every rating
    x = torch.from_numpy(src.features.rows(src.raw.rating_user, src.raw.rating_item))
    assert torch.equal(x, src.x) and x.shape[1] == 3 + 4 + 4 + 4
    assert ((x[:, 3:7].sum(1) == 2) & (x[:, 7:11].sum(1) >= 1) & (x[:, 11:].sum(1) >= 1)).all()
    for state in STATES:
        assert len(src.tasks[state].users) > 0, state


def test_the_cut_by_share_or_value(tmp_path):
    folder = write_synthetic(tmp_path)
    share = source(*SHOP, f"data.root={folder}", "data.cut.share=0.25", "data.split_seed=3")
    assert share.new_item.sum() == 30 and share.info()["cut"] == {"share": 0.25, "split_seed": 3}
    again = source(*SHOP, f"data.root={folder}", "data.cut.share=0.25", "data.split_seed=3", "data.cut.field=price")
    assert np.array_equal(share.new_item, again.new_item)  # seeded by the split seed, the field unused
    price = source(*SHOP, f"data.root={folder}", "data.cut.field=price", "data.cut.value=60", "data.cut.quantile=null")
    prices = np.array([float(line.split("\t")[1]) for line in (folder / "shop.item").read_text().splitlines()[1:]])
    assert np.array_equal(price.new_item, prices > 60)  # item rows: shop.item's order
    assert "keep one" in bad(folder, "data.cut.value=60")  # SHOP sets a quantile too


@pytest.mark.slow
def test_a_data_set_no_reader_ships_trains_end_to_end(tmp_path):
    folder, run = write_synthetic(tmp_path / "shop"), tmp_path / "run"
    r = run_cli("train", *SHOP, f"data.root={folder}", "algo=maml", "trainer.max_steps=6", "trainer.val_every=3",
                "trainer.meta_batch_size=8", "trainer.progress=false", "device=cpu", "device.threads=1",
                f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    result = read_json(run / "eval.json")
    assert set(result["states"]) == set(STATES)
    for state in STATES:
        s = result["states"][state]
        assert s["n_tasks"] > 0 and np.isfinite(s["steps"]["1"]["mae"])
        assert {"bias", "bias_transductive", "mf_foldin", "mf_transductive"} <= set(s["floors"])
    assert "atomic" in (run / "eval.md").read_text()
    again = run_cli("eval", f"checkpoint={run}/checkpoints/best.pt", "device=cpu", "device.threads=1",
                    f"hydra.run.dir={tmp_path}/eval")
    assert again.returncode == 0, again.stderr[-2000:]
    assert set(read_json(tmp_path / "eval" / "eval.json")["states"]) == set(STATES)


# ----------------------------------------------------------------------------- bad files: one line each

def bad(tmp_path, *overrides):
    with pytest.raises(UserError) as e:
        source(*SHOP, f"data.root={tmp_path}", *overrides)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("file, line, message", [
    ("shop.item", "p999\tcheap\tred\t40", "shop.item line 122: field price is 'cheap', not a number (its header says price:float)"),
    ("shop.item", "p999\t3.5\tred\t40 large", "shop.item line 122: field sizes is 'large'"),
    ("shop.inter", "c1\tp1\t4", "shop.inter line 2702 has no ts field (3 tab-separated fields, the header names 4"),
    ("shop.inter", "c1\tp1\t4\t5\t6", "shop.inter line 2702 has a field after ts, the header's last"),
    ("shop.inter", "c1\tp1\t9\t5", "shop.inter line 2702: field stars is '9', off data.rating_scale=[1, 5]"),
    ("shop.user", None, "shop.user line 1: field 'region:string' is not a RecBole header field"),
])
def test_a_line_that_does_not_match_its_header_names_file_line_and_field(tmp_path, file, line, message):
    write_synthetic(tmp_path)
    if line is None:
        (tmp_path / file).write_text("uid:token\tregion:string\nc1\tnorth\n")
    else:
        with open(tmp_path / file, "a") as f:
            f.write(line + "\n")
    assert message in bad(tmp_path)


def test_missing_files_fields_and_features_are_one_line(tmp_path):
    assert "holds 0 .inter files" in bad(tmp_path)
    write_synthetic(tmp_path)
    assert "set data.dataset to one of them" in bad(tmp_path, "data.dataset=nope") and "shop" in bad(tmp_path, "data.dataset=nope")
    for key, name in (("user_id_field", "user_id"), ("item_id_field", "item_id"), ("rating_field", "rating")):
        message = bad(tmp_path, f"data.{key}={name}")
        assert f"shop.inter has no field {name}" in message and f"data.{key}" in message
    assert "data.user_features names age, which is not a user field (shop.user has uid, region" in bad(
        tmp_path, "data.user_features=[age]")
    assert "data.cut.field=year is a field of neither" in bad(tmp_path, "data.cut.field=year")
    (tmp_path / "shop.user").unlink()
    assert "there is no shop.user" in bad(tmp_path)


# ----------------------------------------------------------------------------- the model's side

def test_field_encoder_pools_each_multi_hot_block_and_keeps_movielens_one():
    from metarec.models.melu import FieldEncoder
    torch.manual_seed(0)
    legacy = FieldEncoder([("a", 3)], ["genre", 4], dim=2)  # every checkpoint before data=atomic
    torch.manual_seed(0)
    listed = FieldEncoder([("a", 3)], [["genre", 4]], dim=2)
    x = torch.tensor([[2, 1, 0, 1, 1], [0, 0, 0, 0, 0]])
    assert torch.equal(legacy(x), listed(x)) and legacy.out_dim == 4
    two = FieldEncoder([("a", 3)], [["u", 2], ["v", 3]], dim=2)
    x = torch.tensor([[1, 1, 0, 1, 1, 0]])
    w, a = two.multi.weight, two.embeddings["a"].weight
    expected = torch.cat([a[1], w[0], (w[2] + w[3]) / 2])  # each block its own mean over its own rows
    assert two.out_dim == 6 and torch.allclose(two(x)[0], expected)
    none = FieldEncoder([("a", 3)], [], dim=2)
    assert none.multi is None and torch.equal(none(torch.tensor([[2]]))[0], none.embeddings["a"].weight[2])


def test_catalogue_rows_of_an_atomic_data_set_are_its_evaluation_rows(tmp_path):
    """eval.ranking=catalog and `metarec recommend` build rows for unrated pairs from the feature layout
    (user codes, item codes, user flags, item flags): the shop's user multi-hot block sits between the
    item's columns, and a query item's catalogue row must still be the evaluation's own row."""
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}")
    for state in STATES:
        batch = src.eval_tasks("test")[state]
        cat, t = src.catalog(state), src.tasks[state]
        assert torch.equal(torch.from_numpy(src.new_item)[cat.items], torch.full((len(cat.items),), state.endswith("item_cold")))
        pos = torch.full((src.raw.num_items,), -1)
        pos[cat.items] = torch.arange(len(cat.items))
        x = src.catalog_rows(state, slice(0, None), cat.items)
        rows = x.gather(1, pos[src.rating_item[t.query]].clamp(min=0)[..., None].expand(-1, -1, x.shape[-1]))
        qm = t.query_mask.bool()
        assert torch.equal(rows[qm], batch.query_x[qm]), state
    assert torch.equal(src.user_codes(), src.user_codes({"gender": None}))  # no features: the most common codes
    assert src.user_codes({"region": "north"})[0] == 2  # a user field by name: its code (east, north, south)


# ----------------------------------------------------------------------------- the one-split reader

REGULAR = "user_id:token\titem_id:token\trating:float\ttags:token_seq\n1\t10\t4\ta b\n2\t11\t\t\n1\t12\t3.5\tc\n"


@pytest.mark.parametrize("name, text", [
    ("regular", REGULAR),
    ("no final newline", REGULAR.rstrip("\n")),
    ("blank lines", REGULAR.replace("\n2\t", "\n\n2\t") + "\n\n"),
    ("a blank line first", REGULAR.replace("\n", "\n\n", 1)),
    ("CRLF", REGULAR.replace("\n", "\r\n")),
    ("a short line", REGULAR.replace("\t3.5\tc", "\t3.5")),
    ("a long line", REGULAR.replace("\tc\n", "\tc\tx\n")),
    ("misaligned lines, the right number of tabs", REGULAR.replace("\t3.5\tc", "\t3.5\tc\tx").replace("\t4\ta b", "\t4a b")),
])
def test_the_one_split_reader_reads_what_the_line_loop_reads(name, text, tmp_path, monkeypatch):
    """Regular files take one split of the whole text; every file reads (or is refused, naming the line) as
    the line-by-line parse reads it."""
    from metarec.data import atomic_files
    path = tmp_path / "d.inter"
    path.write_text(text)

    def read():
        try:
            f = atomic_files.read_atomic_file(path)
            return f.types, f.columns, f.lines.tolist(), {n: f.values(n) for n in f.types if n != "rating"}
        except UserError as e:
            return str(e)

    got = read()
    monkeypatch.setattr(atomic_files, "_regular_columns", lambda body, width: None)
    assert got == read()
    if name in ("regular", "no final newline"):
        assert got[1]["rating"] == ["4", "", "3.5"] and got[2] == [2, 3, 4]
    if name.startswith(("a short", "a long", "misaligned")):
        assert isinstance(got, str) and (" line 4 " in got or " line 2 " in got)  # refused, naming the line
