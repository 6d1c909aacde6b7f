"""Every ingest format on tiny files written here: happy path, zips, bad rows, downloads."""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import SourceConfig
from data_pipeline.ingest import ChecksumError, MissingSourceError, fetch, load_source
from data_pipeline.records import BadInputError

ML1M_RATINGS = "1::10::5::978300760\n1::20::3::978300760\n2::10::4::978300100\n"
ML1M_MOVIES = "10::Caf\xe9 Society (1999)::Comedy|Drama\n20::Heat (1995)::Action|Crime|Thriller\n30::Odd (2000)::\n"


def write(path: Path, text: str, encoding: str = "latin-1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def events_rows(raw) -> list[tuple]:
    return [tuple(r) for r in raw.events[["user", "item", "order", "source_row"]].itertuples(index=False)]


def items_rows(raw) -> list[tuple]:
    return [(r.item, r.title, list(r.tags), r.text) for r in raw.items.itertuples(index=False)]


def load(fmt: str, path: Path, **kwargs):
    return load_source(SourceConfig(format=fmt, path=str(path)), **kwargs)


# ---------------------------------------------------------------- ML-1M


ML1M_EVENTS = [("1", "10", 978300760, 0), ("1", "20", 978300760, 1), ("2", "10", 978300100, 2)]
ML1M_ITEMS = [
    ("10", "Caf\xe9 Society (1999)", ["Comedy", "Drama"], "Caf\xe9 Society (1999). Genres: Comedy, Drama"),
    ("20", "Heat (1995)", ["Action", "Crime", "Thriller"], "Heat (1995). Genres: Action, Crime, Thriller"),
    ("30", "Odd (2000)", [], "Odd (2000)"),
]


def test_ml1m_directory(tmp_path):
    write(tmp_path / "ratings.dat", ML1M_RATINGS)
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    raw = load("ml-1m", tmp_path)
    assert events_rows(raw) == ML1M_EVENTS
    assert items_rows(raw) == ML1M_ITEMS
    assert raw.sources == [str((tmp_path / "ratings.dat").resolve()), str((tmp_path / "movies.dat").resolve())]
    assert raw.skipped_rows == 0
    assert raw.events["order"].dtype == "int64"


def test_ml1m_official_zip_layout(tmp_path):
    archive = make_zip(tmp_path / "ml-1m.zip", {
        "ml-1m/ratings.dat": ML1M_RATINGS.encode("latin-1"),
        "ml-1m/movies.dat": ML1M_MOVIES.encode("latin-1"),
        "ml-1m/users.dat": b"1::F::1::10::48067\n",
    })
    raw = load("ml-1m", archive)
    assert events_rows(raw) == ML1M_EVENTS
    assert items_rows(raw) == ML1M_ITEMS
    assert raw.sources == [str(archive.resolve())]


def test_ml1m_gzipped_ratings_file_with_movies_beside_it(tmp_path):
    (tmp_path / "ratings_part.dat.gz").write_bytes(gzip.compress(ML1M_RATINGS.encode()))
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    raw = load("ml-1m", tmp_path / "ratings_part.dat.gz")
    assert events_rows(raw) == ML1M_EVENTS
    assert raw.sources[0] == str((tmp_path / "ratings_part.dat.gz").resolve())


def test_ml1m_wrong_field_count_names_file_line_and_text(tmp_path):
    ratings = write(tmp_path / "ratings.dat", "1::10::5::978300760\n\n1::20::3\n2::10::4::978300100\n")
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    with pytest.raises(BadInputError) as info:
        load("ml-1m", tmp_path)
    assert str(info.value) == f"{ratings}:3: expected 4 fields separated by '::', found 3: '1::20::3'"
    assert (info.value.path, info.value.line) == (str(ratings), 3)


@pytest.mark.parametrize("bad", ["x1", "0x5", "97830.5", " 978300760", ""])
def test_ml1m_non_integer_timestamp_is_rejected(tmp_path, bad):
    # "0x5" is accepted by pyarrow's integer cast: the fast path must not let it through.
    ratings = write(tmp_path / "ratings.dat", f"1::10::5::978300760\n1::20::3::{bad}\n")
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    with pytest.raises(BadInputError) as info:
        load("ml-1m", tmp_path)
    assert str(info.value) == f"{ratings}:2: field 'order' is not an integer: {bad!r}: '1::20::3::{bad}'"


def test_ml1m_skip_bad_rows_counts_them_and_keeps_source_rows(tmp_path):
    write(tmp_path / "ratings.dat", "1::10::5::100\nbad line\n1::x::3::200\n2::20::4::300\n")
    write(tmp_path / "movies.dat", ML1M_MOVIES + "oops\n")
    raw = load("ml-1m", tmp_path, skip_bad_rows=True)
    # source_row counts every data row, skipped ones included, so it still points into the file.
    assert events_rows(raw) == [("1", "10", 100, 0), ("2", "20", 300, 3)]
    assert raw.skipped_rows == 3
    assert items_rows(raw) == ML1M_ITEMS


def test_error_inside_zip_names_archive_member(tmp_path):
    archive = make_zip(tmp_path / "ml-1m.zip", {
        "ml-1m/ratings.dat": b"1::10::5::1\n1::10::5\n", "ml-1m/movies.dat": ML1M_MOVIES.encode("latin-1"),
    })
    with pytest.raises(BadInputError, match=f"^{archive}/ml-1m/ratings.dat:2: expected 4 fields"):
        load("ml-1m", archive)


def test_missing_files_name_path_and_format(tmp_path):
    write(tmp_path / "ratings.dat", ML1M_RATINGS)
    with pytest.raises(MissingSourceError, match=f"{tmp_path}: no movies.dat or movies.dat.gz found; format 'ml-1m'"):
        load("ml-1m", tmp_path)
    with pytest.raises(MissingSourceError, match=f"{tmp_path / 'nowhere'}: not found; format 'ml-100k' expects"):
        load("ml-100k", tmp_path / "nowhere")


def test_unknown_format_lists_the_supported_ones():
    with pytest.raises(ValueError, match="'ml-20m' is not one of .*'ml-1m'.*'synthetic'"):
        load_source(SourceConfig(format="ml-20m", path="x"))


# ---------------------------------------------------------------- ML-100k

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def u_item_line(item: int, title: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{item}|{title}|01-Jan-1995||http://example/{item}|{flags}\n"


ML100K_FILES = {
    "u.data": "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t1\t5\t881250949\n",
    "u.item": u_item_line(1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"])
    + u_item_line(242, "Kolya (1996)", ["Comedy"])
    + u_item_line(267, "unknown", ["unknown"])
    + u_item_line(302, "L.A. Confidential (1997)", ["Crime", "Film-Noir", "Mystery", "Thriller"])
    + u_item_line(303, "Ni\xf1o (1990)", []),
    "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n",
}
ML100K_ITEMS = [
    ("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"],
     "Toy Story (1995). Genres: Animation, Children's, Comedy"),
    ("242", "Kolya (1996)", ["Comedy"], "Kolya (1996). Genres: Comedy"),
    ("267", "unknown", ["unknown"], "unknown. Genres: unknown"),
    ("302", "L.A. Confidential (1997)", ["Crime", "Film-Noir", "Mystery", "Thriller"],
     "L.A. Confidential (1997). Genres: Crime, Film-Noir, Mystery, Thriller"),
    ("303", "Ni\xf1o (1990)", [], "Ni\xf1o (1990)"),
]


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_ml100k_directory(tmp_path, with_genre_file):
    for name, text in ML100K_FILES.items():
        if name != "u.genre" or with_genre_file:
            write(tmp_path / name, text)
    raw = load("ml-100k", tmp_path)
    assert events_rows(raw) == [("196", "242", 881250949, 0), ("186", "302", 891717742, 1), ("196", "1", 881250949, 2)]
    assert items_rows(raw) == ML100K_ITEMS
    assert len(raw.sources) == (3 if with_genre_file else 2)


def test_ml100k_zip_and_genre_order_from_u_genre(tmp_path):
    # A u.genre listing the genres in another order relabels the flag columns accordingly.
    files = dict(ML100K_FILES)
    files["u.genre"] = "".join(f"{g}|{i}\n" for i, g in reversed(list(enumerate(GENRES))))
    archive = make_zip(tmp_path / "ml-100k.zip", {f"ml-100k/{k}": v.encode("latin-1") for k, v in files.items()})
    raw = load("ml-100k", archive)
    assert items_rows(raw) == ML100K_ITEMS
    assert raw.sources == [str(archive.resolve())]


def test_ml100k_bad_flag_and_skip(tmp_path):
    for name, text in ML100K_FILES.items():
        write(tmp_path / name, text)
    write(tmp_path / "u.item", ML100K_FILES["u.item"] + "999|Broken|x\n")
    with pytest.raises(BadInputError, match=r"u\.item:6: expected 24 fields separated by '\|', found 3: '999\|Broken\|x'"):
        load("ml-100k", tmp_path)
    raw = load("ml-100k", tmp_path, skip_bad_rows=True)
    assert raw.skipped_rows == 1 and items_rows(raw) == ML100K_ITEMS


# ---------------------------------------------------------------- MovieLens CSV (ml-latest layout)

CSV_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n2,1,3.5,1445714835\n"
CSV_MOVIES = (
    'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
    '3,"American President, The (1995)",Comedy|Drama|Romance\n4,Caf\u00e9 (2019),(no genres listed)\n'
)
CSV_TAGS = "userId,movieId,tag,timestamp\n2,1,pixar,1\n5,1,\"funny, warm\",2\n7,1,pixar,3\n"


def test_movielens_csv_with_user_tags(tmp_path):
    write(tmp_path / "ratings.csv", CSV_RATINGS, "utf-8")
    write(tmp_path / "movies.csv", CSV_MOVIES, "utf-8")
    write(tmp_path / "tags.csv", CSV_TAGS, "utf-8")
    raw = load("movielens-csv", tmp_path)
    assert events_rows(raw) == [("1", "1", 964982703, 0), ("1", "3", 964981247, 1), ("2", "1", 1445714835, 2)]
    assert items_rows(raw) == [
        ("1", "Toy Story (1995)", ["Adventure", "Animation"],
         "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, funny, warm"),
        ("3", "American President, The (1995)", ["Comedy", "Drama", "Romance"],
         "American President, The (1995). Genres: Comedy, Drama, Romance"),
        ("4", "Caf\u00e9 (2019)", [], "Caf\u00e9 (2019)"),
    ]
    assert len(raw.sources) == 3


def test_movielens_csv_invalid_utf8_names_line(tmp_path):
    write(tmp_path / "ratings.csv", CSV_RATINGS, "utf-8")
    movies = write(tmp_path / "movies.csv", CSV_MOVIES, "latin-1")  # the é is not UTF-8
    with pytest.raises(BadInputError) as info:
        load("movielens-csv", tmp_path)
    assert str(info.value) == f"{movies}:4: not valid utf-8 (byte 0xe9): '4,Caf\ufffd (2019),(no genres listed)'"


def test_movielens_csv_bad_rating_row_and_missing_column(tmp_path):
    ratings = write(tmp_path / "ratings.csv", CSV_RATINGS + '3,abc,2.0,5\n4,"multi\nline",1,2\n', "utf-8")
    write(tmp_path / "movies.csv", CSV_MOVIES, "utf-8")
    with pytest.raises(BadInputError) as info:
        load("movielens-csv", tmp_path)
    assert str(info.value) == f"{ratings}:5: field 'movieId' is not an integer: 'abc': '3,abc,2.0,5'"
    write(tmp_path / "ratings.csv", CSV_RATINGS + '4,"multi\nline",1,2\n', "utf-8")
    with pytest.raises(BadInputError) as info:
        load("movielens-csv", tmp_path)
    assert str(info.value) == f"{ratings}:5: field 'movieId' is not an integer: 'multi\\nline': '4,\"multi\\nline\",1,2'"
    write(tmp_path / "ratings.csv", CSV_RATINGS + '3,abc,2.0,5\n4,"multi\nline",1,2\n', "utf-8")
    assert load("movielens-csv", tmp_path, skip_bad_rows=True).skipped_rows == 2
    write(tmp_path / "ratings.csv", "userId,itemId,rating,timestamp\n1,1,4,5\n", "utf-8")
    with pytest.raises(BadInputError, match=r"ratings.csv:1: missing column\(s\) \['movieId'\]"):
        load("movielens-csv", tmp_path)


# ---------------------------------------------------------------- ML-1M sequences


def test_ml1m_sequences_directory_and_file(tmp_path):
    rows = "user_id,movie_id,seq_idx\n1,20,0\n1,10,1\n2,10,0\n"
    (tmp_path / "sequences.csv.gz").write_bytes(gzip.compress(rows.encode()))
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    expected = [("1", "20", 0, 0), ("1", "10", 1, 1), ("2", "10", 0, 2)]
    assert events_rows(load("ml-1m-sequences", tmp_path)) == expected
    raw = load("ml-1m-sequences", tmp_path / "sequences.csv.gz")
    assert events_rows(raw) == expected and items_rows(raw) == ML1M_ITEMS


# ---------------------------------------------------------------- RecBole

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti9\t3\t881250949.0\nu2\ti8\t4\t881250950\n"
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "i9\tToy Story\t1995\tAnimation Children's\ni8\tUnknown Film\t1995\t\n")
RECBOLE_ITEMS = [("i9", "Toy Story", ["Animation", "Children's"], "Toy Story. Genres: Animation, Children's"),
                 ("i8", "Unknown Film", [], "Unknown Film")]


def test_recbole_atomic_files(tmp_path):
    write(tmp_path / "toy.inter", INTER, "utf-8")
    write(tmp_path / "toy.item", ITEM, "utf-8")
    raw = load("recbole", tmp_path)
    assert events_rows(raw) == [("u1", "i9", 881250949, 0), ("u2", "i8", 881250950, 1)]
    assert items_rows(raw) == RECBOLE_ITEMS
    assert raw.sources == [str((tmp_path / f).resolve()) for f in ("toy.inter", "toy.item")]


def test_recbole_without_timestamp_or_item_file(tmp_path):
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\nu1\ti9\nu1\ti8\n", "utf-8")
    raw = load("recbole", tmp_path)
    assert events_rows(raw) == [("u1", "i9", 0, 0), ("u1", "i8", 1, 1)]  # file order is the order
    assert raw.items.empty and list(raw.items.columns) == ["item", "title", "tags", "text"]


def test_recbole_bad_rows(tmp_path):
    inter = write(tmp_path / "toy.inter", INTER + "u3\ti7\t5\t12.5\nu4\ti7\n", "utf-8")
    with pytest.raises(BadInputError) as info:
        load("recbole", tmp_path)
    assert str(info.value) == f"{inter}:4: field 'timestamp:float' is not an integer: '12.5': 'u3\\ti7\\t5\\t12.5'"
    assert load("recbole", tmp_path, skip_bad_rows=True).skipped_rows == 2
    write(tmp_path / "other.inter", INTER, "utf-8")
    with pytest.raises(MissingSourceError, match=r"2 \(other.inter, toy.inter\) .inter files"):
        load("recbole", tmp_path)


def fake_recbole_wheel(directory: Path) -> Path:
    """The folder layout of the real wheel, with tiny files: no download in tests."""
    directory.mkdir(parents=True, exist_ok=True)
    return make_zip(directory / "recbole-1.2.1-py3-none-any.whl", {
        "recbole/__init__.py": b"",
        "recbole/dataset_example/ml-100k/ml-100k.inter": INTER.encode(),
        "recbole/dataset_example/ml-100k/ml-100k.item": ITEM.encode(),
        "recbole/dataset_example/yelp/yelp.inter": b"not read\n",
    })


@pytest.mark.parametrize("point_at", ["directory", "wheel"])
def test_recbole_wheel_extracts_only_the_ml100k_example(tmp_path, point_at):
    wheel = fake_recbole_wheel(tmp_path / "wheels")
    cache = tmp_path / "cache"
    path = wheel if point_at == "wheel" else wheel.parent
    raw = load("recbole-wheel", path, cache_dir=cache)
    assert events_rows(raw) == [("u1", "i9", 881250949, 0), ("u2", "i8", 881250950, 1)]
    assert items_rows(raw) == RECBOLE_ITEMS
    assert raw.sources == [str(wheel.resolve())]
    extracted = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert extracted == ["recbole-1.2.1-ml-100k/ml-100k.inter", "recbole-1.2.1-ml-100k/ml-100k.item"]


def test_recbole_wheel_without_the_dataset_is_an_error(tmp_path):
    wheel = make_zip(tmp_path / "recbole-1.2.1-py3-none-any.whl", {"recbole/__init__.py": b""})
    with pytest.raises(MissingSourceError, match="holds no recbole/dataset_example/ml-100k/"):
        load("recbole-wheel", wheel, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- generic table


def table_cfg(path: Path, **kwargs) -> SourceConfig:
    columns = {"user": "uid", "item": "iid", "order": "ts", "tags": "cats", "title": "name"}
    return SourceConfig(format="table", path=str(path), columns=columns, **kwargs)


def test_table_parquet_with_list_tags_and_items_from_first_rows(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({
        "uid": ["a", "a", "b"], "iid": [7, 5, 7], "ts": [30, 10, 20],
        "cats": [["x", "y"], [], ["ignored"]], "name": ["Seven", "Five", "Seven again"],
    }), path)
    raw = load_source(table_cfg(path))
    assert events_rows(raw) == [("a", "7", 30, 0), ("a", "5", 10, 1), ("b", "7", 20, 2)]
    assert items_rows(raw) == [("7", "Seven", ["x", "y"], "Seven. Tags: x, y"), ("5", "Five", [], "Five")]


def test_table_csv_with_separator_and_items_file(tmp_path):
    events = write(tmp_path / "log.csv", "uid,iid,ts\nu1,i1,5\nu2,i2,6\n", "utf-8")
    items = write(tmp_path / "items.csv", 'iid,name,cats\ni1,"One, the",a;b\ni2,Two,\n', "utf-8")
    raw = load_source(table_cfg(events, items_path=str(items), tag_separator=";"))
    assert events_rows(raw) == [("u1", "i1", 5, 0), ("u2", "i2", 6, 1)]
    assert items_rows(raw) == [("i1", "One, the", ["a", "b"], "One, the. Tags: a, b"), ("i2", "Two", [], "Two")]
    assert raw.sources == [str(events.resolve()), str(items.resolve())]


def test_table_parquet_nulls_and_fractional_order(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"uid": ["a", None, "b"], "iid": [1, 2, 3], "ts": [1, 2, 3],
                             "cats": ["x", "y", "z"], "name": ["1", "2", "3"]}), path)
    with pytest.raises(BadInputError, match=r"log.parquet: row 1 \(0-based\): null in column\(s\) \['uid'\]"):
        load_source(table_cfg(path))
    raw = load_source(table_cfg(path), skip_bad_rows=True)
    assert events_rows(raw) == [("a", "1", 1, 0), ("b", "3", 3, 2)] and raw.skipped_rows == 1
    pq.write_table(pa.table({"uid": ["a"], "iid": [1], "ts": [1.5], "cats": ["x"], "name": ["1"]}), path)
    with pytest.raises(BadInputError, match="column 'ts' \\(double\\) is not an integer order"):
        load_source(table_cfg(path))


def test_table_column_mapping_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rating'\], missing key\(s\) \['order'\]"):
        load_source(SourceConfig(format="table", path=str(tmp_path), columns={"user": "u", "item": "i", "rating": "r"}))


# ---------------------------------------------------------------- download


def ml100k_zip(path: Path) -> Path:
    return make_zip(path, {f"ml-100k/{k}": v.encode("latin-1") for k, v in ML100K_FILES.items()})


def test_fetch_file_url_checksum_and_skip(tmp_path, monkeypatch):
    archive = ml100k_zip(tmp_path / "src" / "ml-100k.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    got = fetch(archive.as_uri(), digest, tmp_path / "dl")
    assert got == tmp_path / "dl" / "ml-100k.zip" and got.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ml-100k.zip"]  # no temp left behind

    def no_network(*args, **kwargs):
        raise AssertionError("a present file with the right checksum must not be fetched again")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert fetch(archive.as_uri(), digest.upper(), tmp_path / "dl") == got


def test_fetch_checksum_mismatch_removes_the_download(tmp_path):
    archive = ml100k_zip(tmp_path / "ml-100k.zip")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError) as info:
        fetch(archive.as_uri(), "0" * 64, tmp_path / "dl")
    assert str(info.value) == (
        f"{archive.as_uri()}: sha256 mismatch: expected {'0' * 64}, got {actual}; the download was removed"
    )
    assert list((tmp_path / "dl").iterdir()) == []


def test_fetch_replaces_a_corrupt_earlier_download(tmp_path):
    archive = ml100k_zip(tmp_path / "ml-100k.zip")
    write(tmp_path / "dl" / "ml-100k.zip", "truncated")
    got = fetch(archive.as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest(), tmp_path / "dl")
    assert got.read_bytes() == archive.read_bytes()


def test_fetch_rejects_other_schemes(tmp_path):
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://example.org/x.zip", None, tmp_path)


def test_load_source_downloads_then_reads(tmp_path):
    archive = ml100k_zip(tmp_path / "ml-100k.zip")
    cfg = SourceConfig(format="ml-100k", url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    raw = load_source(cfg, cache_dir=tmp_path / "cache")
    assert items_rows(raw) == ML100K_ITEMS
    assert raw.sources == [str((tmp_path / "cache" / "ml-100k.zip").resolve())]


def test_fast_and_line_by_line_paths_agree(tmp_path):
    """A bad row sends the whole file through the scan: its rows must equal the fast parse's."""
    lines = [f"{u}::{i}::{(u * i) % 5 + 1}::{1000 + u * 7 + i}" for u in range(1, 40) for i in range(1, 30)]
    write(tmp_path / "movies.dat", ML1M_MOVIES)
    write(tmp_path / "ratings.dat", "\n".join(lines) + "\n")
    fast = load("ml-1m", tmp_path).events
    write(tmp_path / "ratings.dat", "\n".join(lines) + "\nbroken\n")
    scanned = load("ml-1m", tmp_path, skip_bad_rows=True).events
    pd.testing.assert_frame_equal(fast, scanned)
