"""Geotagged image data sets: CSV readers with row checks, and checks of the image folder.

A data set is a CSV with one row per image (a path relative to an image root folder, a
latitude and a longitude, in degrees) plus that folder. The column names of the common
benchmarks are recognised (any case):

    MP-16, MP16-Pro, Im2GPS3k, YFCC4k    IMG_ID,   LAT, LON  (other columns are ignored)
    the official GeoCLIP loader          IMG_FILE, LAT, LON
    others                               LATITUDE / LONGITUDE / LNG are accepted too

or named by the user (``image_column``, ``lat_column``, ``lon_column``). Rows are checked
before any work; every problem raises ``DataError`` with the file, the line number in the
file (the header is line 1) and the value:

- a missing column, an empty file, a header without rows;
- an empty image path, a coordinate that is not a number or lies out of range;
- the same image listed twice (it would count twice in training and evaluation);
- latitude and longitude under swapped names (a circulating Im2GPS3k copy): every
  "longitude" lies in [-90, 90] while some "latitudes" do not.

Images are never skipped in silence: ``find_missing`` lists the rows whose file is absent,
``check_image`` tells why a file cannot be decoded, ``write_report`` writes the list as a CSV,
and ``check_missing_share`` stops a run (DataError) when more than a set share is missing.

Command line (checks only, no model; exit 2 with one line ``error: ...`` on bad data)::

    python -m geoloc.data.images CSV --images ROOT [--decode] [--report FILE] [--max-missing 0.05]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoloc.common.atomic import write_text
from geoloc.data.cache import DataError

IMAGE_COLUMNS = ("IMG_ID", "IMG_FILE", "IMAGE", "IMAGE_PATH", "PATH", "FILE")
LAT_COLUMNS = ("LAT", "LATITUDE")
LON_COLUMNS = ("LON", "LNG", "LONGITUDE")
DEFAULT_MAX_MISSING = 0.05
REPORT_COLUMNS = ("row", "line", "image", "reason")
FIRST_DATA_LINE = 2  # the header is line 1


@dataclass
class ImageDataset:
    """The checked rows of one CSV: image paths (as written), coordinates and file line numbers."""

    csv: Path
    root: Path
    images: np.ndarray  # (n,) object: paths as written in the CSV
    coords: np.ndarray  # (n, 2) float64 (lat, lon) degrees
    lines: np.ndarray  # (n,) int: line of each row in the CSV file
    columns: dict  # {"image": ..., "lat": ..., "lon": ...} as named in the file
    sha256: str  # of the CSV file's bytes

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> Path:
        """Where image ``i`` lives: the root joined with the CSV path (an absolute CSV path wins)."""
        return self.root / self.images[i]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _pick(
    columns: dict[str, str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path, option: str
) -> str:
    """The file's column for ``what``: the user's choice, else the first known name present."""
    names = ", ".join(columns.values()) or "none"
    if wanted is not None:
        if wanted.strip().upper() not in columns:
            raise DataError(f"{path}: missing column {wanted} (given by {option}; columns: {names})")
        return columns[wanted.strip().upper()]
    for name in candidates:
        if name in columns:
            return columns[name]
    raise DataError(
        f"{path}: missing column for {what} (looked for {', '.join(candidates)}; columns: {names}; "
        f"name it with {option})"
    )


def read_dataset(
    csv_path: str | Path,
    root: str | Path,
    image_column: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
) -> ImageDataset:
    """Read and check a data set CSV (see the module docstring); raises DataError naming file and line."""
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (expected a header such as IMG_ID,LAT,LON and one row per image)")
    try:
        # Everything as text, so that a bad value is reported as written; blank lines are kept
        # as rows (then dropped) so that row i is file line i + 2.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).strip()})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (expected a header such as IMG_ID,LAT,LON)") from None
    columns = {str(c).strip().upper(): str(c) for c in frame.columns}
    image_col = _pick(columns, image_column, IMAGE_COLUMNS, "the image path", path, "--image-column")
    lat_col = _pick(columns, lat_column, LAT_COLUMNS, "latitude", path, "--lat-column")
    lon_col = _pick(columns, lon_column, LON_COLUMNS, "longitude", path, "--lon-column")
    if len({image_col, lat_col, lon_col}) < 3:
        raise DataError(
            f"{path}: image, latitude and longitude must be three different columns "
            f"(got {image_col}, {lat_col}, {lon_col})"
        )

    lines = np.arange(len(frame)) + FIRST_DATA_LINE
    blank = (frame == "").all(axis=1).to_numpy()
    frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
    if frame.empty:
        raise DataError(f"{path}: no rows (a header only)")

    images = frame[image_col].astype(str).str.strip().to_numpy(dtype=object)
    empty = np.flatnonzero(images == "")
    if len(empty):
        raise DataError(f"{path}: line {lines[empty[0]]}: empty {image_col} ({len(empty)} rows without an image path)")

    raw_lat, raw_lon = frame[lat_col].astype(str).str.strip(), frame[lon_col].astype(str).str.strip()
    lat = pd.to_numeric(raw_lat, errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(raw_lon, errors="coerce").to_numpy(np.float64)
    for name, raw, values in ((lat_col, raw_lat, lat), (lon_col, raw_lon, lon)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataError(
                f"{path}: line {lines[bad[0]]}: {name} {raw.iloc[bad[0]]!r} is not a finite number "
                f"({len(bad)} such rows)"
            )

    lat_out = np.abs(lat) > 90
    if lat_out.any() and (np.abs(lon) <= 90).all():
        first = np.flatnonzero(lat_out)[0]
        raise DataError(
            f"{path}: columns {lat_col} and {lon_col} look swapped: every {lon_col} lies in [-90, 90] while "
            f"{lat_col} has {int(lat_out.sum())} outside it "
            f"(first at line {lines[first]}: {lat_col}={raw_lat.iloc[first]}); "
            f"the file is probably latitude-first under swapped names: fix the header or pass "
            f"--lat-column {lon_col} --lon-column {lat_col}"
        )
    for name, raw, values, limit in ((lat_col, raw_lat, lat, 90), (lon_col, raw_lon, lon, 180)):
        bad = np.flatnonzero(np.abs(values) > limit)
        if len(bad):
            raise DataError(
                f"{path}: line {lines[bad[0]]}: {name} {raw.iloc[bad[0]]} out of range "
                f"[-{limit}, {limit}] ({len(bad)} such rows)"
            )

    duplicated = pd.Series(images).duplicated(keep="first").to_numpy()
    if duplicated.any():
        first = np.flatnonzero(duplicated)[0]
        original = np.flatnonzero(images == images[first])[0]
        same = lat[first] == lat[original] and lon[first] == lon[original]
        what = "a duplicate row" if same else "the same image with other coordinates"
        raise DataError(
            f"{path}: line {lines[first]}: {image_col} {images[first]} repeats line {lines[original]} "
            f"({what}; {int(duplicated.sum())} repeated rows); remove the repeats"
        )

    return ImageDataset(
        csv=path,
        root=Path(root).expanduser(),
        images=images,
        coords=np.stack([lat, lon], axis=1),
        lines=lines,
        columns={"image": image_col, "lat": lat_col, "lon": lon_col},
        sha256=file_sha256(path),
    )


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    return root


def find_missing(dataset: ImageDataset, threads: int = 16) -> list[tuple[int, str]]:
    """(row, reason) for every row whose image file does not exist (a stat per file, no decoding).

    The stats run in a thread pool: on a network file system they wait on the server, not the CPU.
    """
    from concurrent.futures import ThreadPoolExecutor

    root = str(check_root(dataset.root))
    paths = [os.path.join(root, name) for name in dataset.images]
    with ThreadPoolExecutor(threads) as pool:
        exists = list(pool.map(os.path.isfile, paths, chunksize=4096))
    return [(i, "missing") for i, ok in enumerate(exists) if not ok]


def check_image(path: str | Path) -> str | None:
    """Why a file cannot be used as an image (None when it decodes fully)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.convert("RGB").load()
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def write_report(path: str | Path, dataset: ImageDataset, problems: list[tuple[int, str]]) -> Path:
    """Write the rows whose image is missing or unreadable (row, CSV line, image path, reason)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(REPORT_COLUMNS)
    for row, reason in sorted(problems):
        writer.writerow([row, int(dataset.lines[row]), dataset.images[row], reason])
    write_text(path, text.getvalue())
    return path


def check_missing_share(dataset: ImageDataset, problems: list, max_missing: float, report: Path) -> None:
    """Raise DataError when more than ``max_missing`` (a share, 0..1) of the images is missing or unreadable."""
    share = len(problems) / max(len(dataset), 1)
    if problems and (share > max_missing or len(problems) == len(dataset)):
        first_row, reason = sorted(problems)[0]
        raise DataError(
            f"{dataset.csv}: {len(problems)} of {len(dataset)} images ({share:.1%}) missing or unreadable under "
            f"{dataset.root}, more than --max-missing {max_missing:.1%} (first: line {dataset.lines[first_row]}, "
            f"{dataset.path(first_row)}: {reason}); full list in {report}"
        )


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", help="data set CSV: image path, latitude, longitude (IMG_ID/IMG_FILE, LAT, LON)")
    parser.add_argument("--images", required=True, help="image root folder; CSV paths are relative to it")
    parser.add_argument("--image-column", help="image path column (default: IMG_ID, IMG_FILE, ... whichever exists)")
    parser.add_argument("--lat-column", help="latitude column (default: LAT or LATITUDE)")
    parser.add_argument("--lon-column", help="longitude column (default: LON, LNG or LONGITUDE)")
    parser.add_argument(
        "--max-missing",
        type=float,
        default=DEFAULT_MAX_MISSING,
        help="fail when more than this share of images is missing or unreadable (default 0.05)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geoloc.data.images", description="Check a geotagged image data set (CSV rows and image files)."
    )
    add_dataset_arguments(parser)
    parser.add_argument("--decode", action="store_true", help="also decode every image (slow; finds corrupt files)")
    parser.add_argument("--report", help="where to write the missing/unreadable list (default: next to the CSV)")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.max_missing <= 1:
            raise DataError(f"--max-missing: must lie in [0, 1], got {args.max_missing}")
        dataset = read_dataset(args.csv, args.images, args.image_column, args.lat_column, args.lon_column)
        problems = find_missing(dataset)
        if args.decode:
            absent = {row for row, _ in problems}
            for i in range(len(dataset)):
                if i not in absent and (reason := check_image(dataset.path(i))) is not None:
                    problems.append((i, reason))
        report = Path(args.report) if args.report else dataset.csv.with_name(dataset.csv.stem + ".missing_images.csv")
        write_report(report, dataset, problems)
        check_missing_share(dataset, problems, args.max_missing, report)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{dataset.csv}: {len(dataset)} rows ({dataset.columns['image']}, {dataset.columns['lat']}, "
        f"{dataset.columns['lon']}), {len(problems)} images missing or unreadable; list in {report}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
