"""Readers for ml-100k (real copy in ../shared/data), ml-1m and RecBole atomic files (fixtures)."""
from pathlib import Path

import numpy as np
import pytest

from metarec.data.movielens_io import (
    ML100K_GENRES, MovieLensRaw, detect_format, read_atomic, read_ml1m, read_ml100k, read_movielens, title_year,
)
from metarec.errors import UserError

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=f"real ml-100k not found at {ML100K}")


# ----------------------------------------------------------------------------- fixtures

def write_ml1m(folder: Path, ratings: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Cité des enfants perdus, La (City of Lost Children, The) (1995)::Adventure|Sci-Fi\n"
        "3::Untitled::Drama\n".encode("latin-1")
    )
    if ratings is None:
        ratings = ("1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n"
                   "2::1::2::978301999\n")  # user 2 rates item 1 twice: the last one counts
    (folder / "ratings.dat").write_text(ratings)
    return folder


def write_atomic(folder: Path, name: str = "toy", user: bool = True, item: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\tm1\t4\t100\nu2\tm2\t3.5\t200\nu1\tm2\t5\t300\nu9\tm1\t1\t400\n"
    )
    if user:
        (folder / f"{name}.user").write_text(  # no occupation column; u3 has no ratings
            "user_id:token\tage:token\tgender:token\tzip_code:token\n"
            "u1\t24\tM\t85711\nu2\t53\tF\t94043\nu3\t31\tM\t10001\n"
        )
    if item:
        (folder / f"{name}.item").write_text(
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
            "m1\tMisérables, Les\t1995\tDrama Musical\nm2\tunkonwn\tunkonwn\tunknown\n",
            encoding="utf-8",
        )
    return folder


def check_consistent(raw: MovieLensRaw) -> None:
    n = len(raw.rating)
    assert raw.rating_user.dtype == np.int64 and raw.rating_item.dtype == np.int64
    assert raw.rating.dtype == np.float32 and raw.timestamp.dtype == np.int64
    assert len(raw.rating_user) == len(raw.rating_item) == len(raw.timestamp) == n
    assert raw.rating_user.min() >= 0 and raw.rating_user.max() < raw.num_users
    assert raw.rating_item.min() >= 0 and raw.rating_item.max() < raw.num_items
    assert len(raw.user_gender) == len(raw.user_age) == len(raw.user_occupation) == len(raw.user_zip)
    assert len(raw.item_year) == len(raw.item_genres) == len(raw.item_title)
    assert raw.user_age.dtype == np.int64 and raw.item_year.dtype == np.int64
    pairs = raw.rating_user * raw.num_items + raw.rating_item
    assert len(np.unique(pairs)) == n
    assert all(p.is_file() for p in raw.source_files)


# ----------------------------------------------------------------------------- real ml-100k

@needs_ml100k
def test_ml100k_real_counts_and_features():
    raw = read_movielens(ML100K)
    check_consistent(raw)
    assert (len(raw.rating), raw.num_users, raw.num_items) == (100_000, 943, 1_682)
    assert set(np.unique(raw.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert raw.item_title[0] == "Toy Story (1995)"
    assert raw.item_genres[0] == ["Animation", "Children's", "Comedy"]
    assert raw.item_year[0] == 1995
    assert raw.item_title[542] == "Misérables, Les (1995)"  # latin-1 é
    assert raw.item_title[1103] == "C'est arrivé près de chez vous (1992)"
    assert raw.item_title[266] == "unknown" and raw.item_year[266] == -1  # the one item with no year
    assert raw.item_year[1251] == 1963  # the title's year, not its release date (27-Jun-1997)
    assert raw.item_year[22] == 1976  # Taxi Driver (1976), released 16-Feb-1996
    assert raw.item_year[1411] == 1995  # "... (1995) (V)": the last (yyyy) in the title
    assert (raw.user_age[0], raw.user_gender[0], raw.user_occupation[0], raw.user_zip[0]) == (24, "M", "technician", "85711")
    assert raw.user_zip[7] == "05201"  # zips stay strings, leading zero kept
    assert (raw.rating_user[0], raw.rating_item[0], raw.rating[0], raw.timestamp[0]) == (195, 241, 3.0, 881250949)
    assert [p.name for p in raw.source_files] == ["u.data", "u.user", "u.item"]


@needs_ml100k
def test_ml100k_genre_order_matches_u_genre():
    lines = [ln.split("|") for ln in (ML100K / "u.genre").read_text().splitlines() if ln.strip()]
    assert [name for name, _ in sorted(lines, key=lambda p: int(p[1]))] == ML100K_GENRES


def test_ml100k_fixture_with_blank_line_and_unknown_date(tmp_path):
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = ["0"] * 19
    drama = flags.copy(); drama[8] = "1"
    (tmp_path / "u.item").write_bytes(
        ("1|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(drama) + "\n"
         "2|Old (1950)|||http://y|" + "|".join(flags) + "\n").encode("latin-1"))
    (tmp_path / "u.data").write_text("1\t1\t5\t10\n\n2\t2\t1\t20\n")  # a blank line is fine
    raw = read_ml100k(tmp_path)
    check_consistent(raw)
    assert raw.item_title[0] == "Misérables, Les (1995)" and raw.item_genres[0] == ["Drama"]
    assert list(raw.item_year) == [1995, 1950]  # the title's year, with or without a release date
    assert raw.item_genres[1] == []
    assert list(raw.rating) == [5.0, 1.0]


# ----------------------------------------------------------------------------- ml-1m fixture

def test_ml1m_fixture(tmp_path):
    raw = read_movielens(write_ml1m(tmp_path / "ml-1m"))
    check_consistent(raw)
    assert detect_format(tmp_path / "ml-1m") == "ml-1m"
    assert raw.num_users == 3 and raw.num_items == 3  # user 3 and item 3 have no ratings but stay
    assert raw.item_title[1] == "Cité des enfants perdus, La (City of Lost Children, The) (1995)"
    assert raw.item_genres[0] == ["Animation", "Children's", "Comedy"]
    assert raw.item_genres[1] == ["Adventure", "Sci-Fi"]
    assert list(raw.item_year) == [1995, 1995, -1]
    assert list(raw.user_age) == [1, 56, 25] and raw.user_occupation == ["10", "16", "15"]
    assert raw.user_gender == ["F", "M", "M"] and raw.user_zip[0] == "48067"
    # duplicate (user 2, item 1): the later rating (2 at 978301999) is kept
    assert list(zip(raw.rating_user, raw.rating_item, raw.rating, raw.timestamp)) == [
        (0, 0, 5.0, 978300760), (0, 1, 3.0, 978302109), (1, 0, 2.0, 978301999)]


def test_ml1m_crlf_line_endings(tmp_path):
    raw = read_ml1m(write_ml1m(tmp_path, ratings="1::1::5::1\r\n3::2::4::2\r\n"))
    assert list(raw.rating) == [5.0, 4.0] and list(raw.rating_user) == [0, 2]


# ----------------------------------------------------------------------------- RecBole atomic

def test_atomic_fixture(tmp_path):
    raw = read_movielens(write_atomic(tmp_path))
    check_consistent(raw)
    assert detect_format(tmp_path) == "atomic"
    # user rows: u1 u2 u3 from toy.user, then u9 seen only in toy.inter
    assert raw.num_users == 4 and raw.num_items == 2
    assert raw.user_gender == ["M", "F", "M", "unknown"]
    assert list(raw.user_age) == [24, 53, 31, -1]
    assert raw.user_occupation == ["unknown"] * 4  # no such column
    assert raw.item_title == ["Misérables, Les", "unkonwn"]
    assert list(raw.item_year) == [1995, -1]  # RecBole's own ml-100k writes "unkonwn"
    assert raw.item_genres == [["Drama", "Musical"], ["unknown"]]
    assert list(raw.rating) == [4.0, 3.5, 5.0, 1.0]
    assert list(raw.rating_user) == [0, 1, 0, 3] and list(raw.rating_item) == [0, 1, 1, 0]
    assert list(raw.timestamp) == [100, 200, 300, 400]
    assert [p.name for p in raw.source_files] == ["toy.inter", "toy.user", "toy.item"]


def test_atomic_without_user_and_item_files(tmp_path):
    raw = read_atomic(write_atomic(tmp_path, user=False, item=False))
    check_consistent(raw)
    assert raw.num_users == 3 and raw.num_items == 2
    assert raw.user_gender == ["unknown"] * 3 and list(raw.item_year) == [-1, -1]
    assert raw.item_genres == [[], []]


def test_atomic_malformed_line(tmp_path):
    write_atomic(tmp_path)
    with open(tmp_path / "toy.inter", "a") as f:
        f.write("u1\tm1\t4\n")
    with pytest.raises(UserError, match=r"toy\.inter line 6"):
        read_atomic(tmp_path)


def test_atomic_rating_off_scale(tmp_path):
    write_atomic(tmp_path)
    with open(tmp_path / "toy.inter", "a") as f:
        f.write("u3\tm1\t0\t1\n")
    with pytest.raises(UserError, match=r"toy\.inter line 6.*rating 0"):
        read_atomic(tmp_path)


def test_atomic_year_not_a_year_falls_back_to_the_title(tmp_path):
    """RecBole's ml-100k.item has release_year "V" for "Land Before Time III: ... (1995) (V)" and keeps
    "(1995)" in the title: the title's year still counts, as u.item's copy reads it."""
    write_atomic(tmp_path)
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "m1\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n"
        "m2\tunkonwn\tunkonwn\tunknown\n")
    assert list(read_atomic(tmp_path).item_year) == [1995, -1]


# ----------------------------------------------------------------------------- an item's year

def test_title_year_is_the_last_year_in_parentheses():
    assert title_year("Toy Story (1995)") == 1995
    assert title_year("Heidi Fleiss: Hollywood Madam (1995) ") == 1995  # u.item keeps a trailing space
    assert title_year("Land Before Time III: The Time of the Great Giving (1995) (V)") == 1995
    assert title_year("1900 (Novecento) (1976)") == 1976
    assert title_year("Cité des enfants perdus, La (City of Lost Children, The) (1995)") == 1995
    assert title_year("unknown") == title_year("Untitled (V)") == title_year("") == -1


# ----------------------------------------------------------------------------- errors

def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_movielens(tmp_path / "nope")


def test_folder_without_data_lists_expected_files(tmp_path):
    (tmp_path / "README").write_text("hi")
    with pytest.raises(UserError) as info:
        read_movielens(tmp_path)
    msg = str(info.value)
    assert "u.data" in msg and "ratings.dat" in msg and ".inter" in msg and "\n" not in msg


def test_incomplete_ml100k_names_missing_files(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t10\n")
    with pytest.raises(UserError, match="missing u.user, u.item"):
        read_ml100k(tmp_path)


def test_malformed_rating_line_names_file_and_line(tmp_path):
    write_ml1m(tmp_path, ratings="1::1::5::978300760\n1::2::3::978302109\n2::1::four::1\n")
    with pytest.raises(UserError, match=r"ratings\.dat line 3 is malformed") as info:
        read_ml1m(tmp_path)
    assert "\n" not in str(info.value)


def test_rating_line_with_too_few_fields(tmp_path):
    write_ml1m(tmp_path, ratings="1::1::5::978300760\n1::2::3\n2::1::4::1::9\n")
    with pytest.raises(UserError, match=r"ratings\.dat line 2 is malformed"):
        read_ml1m(tmp_path)


def test_rating_off_scale_names_file_and_line(tmp_path):
    write_ml1m(tmp_path, ratings="1::1::5::978300760\n1::2::7::978302109\n")
    with pytest.raises(UserError, match=r"ratings\.dat line 2 has rating 7, off the 1-5 scale"):
        read_ml1m(tmp_path)


def test_rating_for_unknown_user(tmp_path):
    write_ml1m(tmp_path, ratings="1::1::5::978300760\n42::2::3::978302109\n")
    with pytest.raises(UserError, match=r"ratings\.dat line 2 names user 42"):
        read_ml1m(tmp_path)


def test_malformed_user_line(tmp_path):
    write_ml1m(tmp_path)
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56\n")
    with pytest.raises(UserError, match=r"users\.dat line 2 is malformed"):
        read_ml1m(tmp_path)
