"""MovieLens in its four shapes: ML-1M ``.dat``, ML-100k ``u.*``, the newer CSV layout, and the
time-ordered ``sequences.csv.gz`` of the shared ML-1M copy. Tags are genres everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from data_pipeline.ingest.delimited import INT, Layout, Parsed, read_delimited
from data_pipeline.ingest.frames import events_frame, items_frame, split_tags, unique_sources
from data_pipeline.ingest.locate import SourceFile, find_file, is_zip, require_path
from data_pipeline.records import RawData

GENRE_LABEL = "Genres"
# u.genre of ML-100k, used when the archive lacks that file. "unknown" is a real tag there.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
_RATING_NAMES = ("user", "item", "rating", "order")
_RATING_INTS = {"user": INT, "item": INT, "order": INT}


@dataclass
class ItemMeta:
    """Parsed movie metadata, one entry per movie in file order."""

    ids: list[str]
    titles: list[str]
    tags: list[list[str]]
    extra: list[list[str]] | None = None  # user tags (movielens-csv tags.csv), appended to the text
    skipped: int = 0


def load_ml1m(path: Path, skip_bad_rows: bool) -> RawData:
    ratings, movies = _main_and_movies(path, ("ratings.dat",), "ml-1m")
    ratings_layout = Layout(sep="::", encoding="latin-1", names=_RATING_NAMES, kinds=_RATING_INTS)
    events = read_delimited(ratings, ratings_layout, skip_bad_rows)
    return _movielens_raw(events, _read_movies_dat(movies, skip_bad_rows), [ratings, movies])


def load_ml1m_sequences(path: Path, skip_bad_rows: bool) -> RawData:
    sequences, movies = _main_and_movies(path, ("sequences.csv",), "ml-1m-sequences")
    layout = Layout(sep=",", quoted=True, kinds={"user_id": INT, "movie_id": INT, "seq_idx": INT})
    events = _renamed(read_delimited(sequences, layout, skip_bad_rows), user="user_id", item="movie_id", order="seq_idx")
    return _movielens_raw(events, _read_movies_dat(movies, skip_bad_rows), [sequences, movies])


def load_ml100k(path: Path, skip_bad_rows: bool) -> RawData:
    require_path(path, "ml-100k", "a directory or zip holding u.data and u.item")
    ratings = find_file(path, ("u.data",), "ml-100k")
    items_file = find_file(path, ("u.item",), "ml-100k")
    genre_file = find_file(path, ("u.genre",), "ml-100k", required=False)
    genres = _read_genre_names(genre_file) if genre_file else ML100K_GENRES
    events = read_delimited(
        ratings, Layout(sep="\t", encoding="latin-1", names=_RATING_NAMES, kinds=_RATING_INTS), skip_bad_rows
    )
    names = ("item", "title", "release", "video_release", "url", *(f"genre:{g}" for g in genres))
    flags = {f"genre:{g}": INT for g in genres}
    parsed = read_delimited(
        items_file, Layout(sep="|", encoding="latin-1", names=names, kinds={"item": INT, **flags}), skip_bad_rows
    )
    flag_rows = zip(*(parsed.table.column(f"genre:{g}").to_pylist() for g in genres))
    tags = [[g for g, flag in zip(genres, row) if flag] for row in flag_rows]
    items = ItemMeta(_id_strings(parsed.table), parsed.table.column("title").to_pylist(), tags, skipped=parsed.skipped)
    sources = [ratings, items_file, *([genre_file] if genre_file else [])]
    return _movielens_raw(events, items, sources)


def load_movielens_csv(path: Path, skip_bad_rows: bool) -> RawData:
    require_path(path, "movielens-csv", "a directory or zip holding ratings.csv and movies.csv")
    ratings = find_file(path, ("ratings.csv",), "movielens-csv")
    movies = find_file(path, ("movies.csv",), "movielens-csv")
    user_tags_file = find_file(path, ("tags.csv",), "movielens-csv", required=False)
    parsed = read_delimited(
        ratings, Layout(sep=",", quoted=True, kinds={"userId": INT, "movieId": INT, "timestamp": INT}), skip_bad_rows
    )
    events = _renamed(parsed, user="userId", item="movieId", order="timestamp")
    movie_rows = read_delimited(movies, Layout(sep=",", quoted=True, kinds={"movieId": INT}), skip_bad_rows)
    genres = [split_tags(g, "|", "(no genres listed)") for g in movie_rows.table.column("genres").to_pylist()]
    item_ids = movie_rows.table.column("movieId").to_pylist()
    items = ItemMeta([str(i) for i in item_ids], movie_rows.table.column("title").to_pylist(), genres)
    items.skipped = movie_rows.skipped
    if user_tags_file is not None:
        user_tags, tag_skips = _read_user_tags(user_tags_file, skip_bad_rows)
        items.extra = [user_tags.get(i, []) for i in item_ids]
        items.skipped += tag_skips
    sources = [ratings, movies, *([user_tags_file] if user_tags_file else [])]
    return _movielens_raw(events, items, sources)


def _read_user_tags(source: SourceFile, skip_bad_rows: bool) -> tuple[dict[int, list[str]], int]:
    """movieId -> distinct user tags in file order (they describe the item, they are not genres)."""
    parsed = read_delimited(source, Layout(sep=",", quoted=True, kinds={"userId": INT, "movieId": INT}), skip_bad_rows)
    by_movie: dict[int, dict[str, None]] = {}
    for movie, tag in zip(parsed.table.column("movieId").to_pylist(), parsed.table.column("tag").to_pylist()):
        if tag.strip():
            by_movie.setdefault(movie, {})[tag.strip()] = None
    return {movie: list(tags) for movie, tags in by_movie.items()}, parsed.skipped


def _read_movies_dat(source: SourceFile, skip_bad_rows: bool) -> ItemMeta:
    layout = Layout(sep="::", encoding="latin-1", names=("item", "title", "genres"), kinds={"item": INT})
    parsed = read_delimited(source, layout, skip_bad_rows)
    tags = [split_tags(g, "|", "(no genres listed)") for g in parsed.table.column("genres").to_pylist()]
    return ItemMeta(_id_strings(parsed.table), parsed.table.column("title").to_pylist(), tags, skipped=parsed.skipped)


def _id_strings(table: pa.Table) -> list[str]:
    return [str(i) for i in table.column("item").to_pylist()]


def _read_genre_names(source: SourceFile) -> tuple[str, ...]:
    """u.genre lines ``name|index``, returned in index order."""
    parsed = read_delimited(source, Layout(sep="|", encoding="latin-1", names=("name", "index"), kinds={"index": INT}))
    pairs = sorted(zip(parsed.table.column("index").to_pylist(), parsed.table.column("name").to_pylist()))
    return tuple(name for _, name in pairs)


def _main_and_movies(path: Path, main_names: tuple[str, ...], fmt: str) -> tuple[SourceFile, SourceFile]:
    """The interactions file and movies.dat: inside a directory/zip, or a file and its neighbour."""
    require_path(path, fmt, f"a directory or zip holding {main_names[0]} and movies.dat, or the {main_names[0]} file")
    if path.is_dir() or is_zip(path):
        return find_file(path, main_names, fmt), find_file(path, ("movies.dat",), fmt)
    return SourceFile(path), find_file(path.parent, ("movies.dat",), fmt)


def _renamed(parsed: Parsed, **ours_to_theirs: str) -> Parsed:
    """The file's column names replaced by ours (user, item, order)."""
    theirs_to_ours = {theirs: ours for ours, theirs in ours_to_theirs.items()}
    names = [theirs_to_ours.get(name, name) for name in parsed.table.column_names]
    return Parsed(parsed.table.rename_columns(names), parsed.skipped)


def _movielens_raw(events: Parsed, items: ItemMeta, sources: list[SourceFile]) -> RawData:
    table: pa.Table = events.table
    columns = (table.column(name) for name in ("user", "item", "order", "source_row"))
    return RawData(
        events=events_frame(*columns),
        items=items_frame(items.ids, items.titles, items.tags, GENRE_LABEL, extra=items.extra),
        sources=unique_sources(s.path for s in sources),
        skipped_rows=events.skipped + items.skipped,
    )
