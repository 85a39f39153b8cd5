"""Hostile archives of the security issue: each is refused cheaply, whatever its size.

The old reader handed uploads to tarfile and zipfile, whose work grows with the archive:
a huge pax or GNU long-name header is read whole into memory, folders skipped every cap,
CPython's pax regex backtracks quadratically on digit runs (CVE-2024-6232), and zipfile
builds an object for every central-directory entry (and parses extra fields
quadratically) before anything could count them. Each test here builds one such shape,
checks it in a fresh process (``archive_probe.py``: peak memory is a high-water mark, so it
must be measured away from pytest's own process) and asserts what the issue asks: an
InputError naming ``dataset`` with a 4xx status, under 2 s of CPU (not wall) time and
under 150 MiB of memory growth. Every subprocess shape fails on the old reader, by time,
memory or a crash; the numbers are in each test's docstring.

The archives are built in milliseconds: a compressed piece is repeated rather than
recompressed (``gzip_of``), so a 256 MiB header costs a quarter of a MiB of test data.

What the zip reader costs is measured in this process with ``tracemalloc``, which sees
every buffer zlib, bz2 and lzma hand back: the peak is of this call alone.
"""

from __future__ import annotations

import bz2
import functools
import io
import json
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from shared.archives import ArchiveLimits, SafeArchive, _read_zip_member
from shared.db import session_scope
from shared.errors import InputError
from shared.models import Job
from tests.finetune_data import shape_files

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("archive_probe.py")
PNG = shape_files(1)["discs/000.png"]
END = bytes(1024)  # a tar's end-of-archive marker
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"


def deflate_of(*pieces: tuple[bytes, int]) -> tuple[bytes, int, int]:
    """(raw deflate stream, CRC-32, length) of each ``(bytes, times)`` piece repeated.

    Each piece is compressed once and ends with a full flush, which resets the compressor,
    so compressing it again would give the same bytes: the repeats are copies.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out, crc, size = [], 0, 0
    for data, times in pieces:
        out.append((packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)) * times)
        for _ in range(times):
            crc = zlib.crc32(data, crc)
        size += len(data) * times
    out.append(packer.flush())
    return b"".join(out), crc, size


def gzip_of(*pieces: tuple[bytes, int]) -> bytes:
    """One gzip member holding each ``(bytes, times)`` piece repeated ``times`` times.

    The CRC and length in the trailer cover the whole stream, as a real gzip would write.
    """
    stream, crc, size = deflate_of(*pieces)
    return GZIP_HEADER + stream + struct.pack("<2L", crc, size & 0xFFFFFFFF)


def tar_header(name: bytes, typeflag: bytes, size: int = 0) -> bytes:
    """A ustar header block with a valid checksum, as any tar writer would make it."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 0
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def with_base256_size(header: bytes, size: int) -> bytes:
    """The header with a GNU base-256 size (any size, 2**80 too) and its checksum redone."""
    block = bytearray(header)
    block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def image_member(name: bytes = b"discs/1.png") -> bytes:
    return tar_header(name, b"0", len(PNG)) + padded(PNG)


def pax_record(keyword: bytes, length: int) -> bytes:
    """One well-formed ``LEN keyword=value\\n`` record of exactly ``length`` bytes."""
    head = b"%d %s=" % (length, keyword)
    return head + b"a" * (length - len(head) - 1) + b"\n"


def central_entry(name: bytes, extra: bytes = b"", size: int = 0, crc: int = 0) -> bytes:
    """A zip central-directory record (a folder when the name ends in '/')."""
    mode = (0o40755 << 16) | 0x10 if name.endswith(b"/") else 0o100644 << 16
    fields = (b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, crc, size, size, len(name), len(extra))
    return struct.pack("<4s4B4HL2L5H2L", *fields, 0, 0, 0, mode, 0) + name + extra


def zip_with_directory(records: bytes, count: int) -> bytes:
    """A zip of one stored image whose central directory also holds ``records``."""
    name, crc = b"discs/1.png", zlib.crc32(PNG)
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(PNG), len(PNG), len(name), 0
    )
    directory = central_entry(name, size=len(PNG), crc=crc) + records
    entries = min(count + 1, 0xFFFF)  # zipfile walks the directory's bytes, not this count
    fields = (b"PK\x05\x06", 0, 0, entries, entries, len(directory), len(local + name + PNG), 0)
    return local + name + PNG + directory + struct.pack("<4s4H2LH", *fields)


def zip_of_one(name: bytes, method: int, packed: bytes, size: int, crc: int = 0) -> bytes:
    """A zip of one member whose compressed bytes, method and declared size the test picks."""
    head = (20, 0, method, 0, 0, crc, len(packed), size, len(name), 0)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", *head) + name + packed
    fields = (20, 3, 20, 0, 0, method, 0, 0, crc, len(packed), size, len(name), 0, 0, 0, 0)
    central = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", *fields, 0o100644 << 16, 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


@functools.cache
def bzip2_zeros(mib: int = 32) -> bytes:
    """A bzip2 stream of ``mib`` MiB of zeros: about 100 bytes whatever ``mib`` is, and a
    single call to the decompressor yields all of it (32 MiB take 0.25 s to compress)."""
    packer, zeros = bz2.BZ2Compressor(9), bytes(MIB)
    return b"".join(packer.compress(zeros) for _ in range(mib)) + packer.flush()


def traced(call):
    """(what ``call()`` returns, the peak of Python-allocated memory while it ran)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def probe(tmp_path: Path, archive: bytes) -> dict:
    """What checking ``archive`` cost in a fresh process (see archive_probe.py)."""
    path = tmp_path / "upload"
    path.write_bytes(archive)
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(
        [sys.executable, str(PROBE), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the probe died ({done.returncode}: over its CPU limit?)"
    return json.loads(done.stdout)


def assert_refused_cheaply(report: dict, *words: str) -> None:
    assert report["refused"], report
    assert report["field"] == "dataset" and 400 <= report["status"] < 500, report
    assert all(word in report["message"] for word in words), report
    assert report["cpu_s"] < 2.0, report
    assert report["rss_growth_mib"] < 150, report


def huge_extended_header(typeflag: bytes, size: int = 256 * MIB) -> bytes:
    """A .tar.gz whose first header is a pax or GNU long-name header of ``size`` bytes."""
    name = b"././@LongLink" if typeflag == b"L" else b"././@PaxHeader"
    return gzip_of(
        (tar_header(name, typeflag, size), 1), (b"a" * MIB, size // MIB), (image_member() + END, 1)
    )


def test_huge_pax_header_is_refused_before_it_is_read(tmp_path):
    """256 MiB of pax header in 260 KiB of .tar.gz: the old reader read it whole (4.5 s of
    CPU and 268 MiB here; the issue measured ~800 MiB) and then accepted the archive."""
    archive = huge_extended_header(b"x")
    assert len(archive) < 300 * 1024
    assert_refused_cheaply(probe(tmp_path, archive), "pax extended header", "8192")


def test_huge_gnu_long_name_is_refused_before_it_is_read(tmp_path):
    """A 256 MiB GNU long name: the old reader read it whole and decoded it (519 MiB)."""
    assert_refused_cheaply(probe(tmp_path, huge_extended_header(b"L")), "GNU long-name header")


def test_million_tar_folders_stop_early(tmp_path):
    """A million folder headers in 2.3 MiB of .tar.gz skipped every cap: the old reader
    spent ~30 s and ~380 MiB on them (here the probe's 10 s CPU limit killed it). Identical
    headers compress 224:1, so the ratio, measured against the compressed bytes read so
    far, stops them even before the entry cap (which test_folders_and_extended_headers_
    count_as_entries checks)."""
    archive = gzip_of((tar_header(b"d/", b"5") * 2048, 512), (END, 1))
    assert_refused_cheaply(probe(tmp_path, archive), "bomb")


def test_million_zip_folders_are_refused_before_zipfile_parses_them(tmp_path):
    """A million folder entries (48 MiB, under the 64 MiB request cap): the old reader let
    zipfile build a ZipInfo per entry before skipping folders (killed at the probe's 10 s
    CPU limit, 510 MiB in)."""
    archive = zip_with_directory(central_entry(b"d/") * 1_000_000, 1_000_000)
    assert_refused_cheaply(probe(tmp_path, archive), "central directory")


def test_digit_runs_in_pax_records_never_reach_a_regex(tmp_path):
    """64 pax headers of 8,000 digits each, every one under the header cap: CPython 3.11.7's
    pax regex backtracks over each run (CVE-2024-6232): 7 s of CPU on the old reader, which
    then accepted the archive (one run of 40,000 digits: 2.8 s). Parsed by hand, the first
    run is a malformed record."""
    pax = tar_header(b"././@PaxHeader", b"x", 8000) + padded(b"1" * 8000)
    members = b"".join(pax + image_member(b"discs/%d.png" % i) for i in range(64))
    assert_refused_cheaply(probe(tmp_path, members + END), "malformed record")


def test_gzip_bomb_of_small_headers_stops_early(tmp_path):
    """1.1 GiB of tar stream, more than the 1 GiB unpacked cap, made of headers that each
    pass the header cap: 8 KiB pax records each followed by a folder. The old reader
    inflated it all and kept every record (killed at the probe's 10 s CPU limit, 340 MiB
    in); now the entry cap stops the stream about 140 MiB in."""
    unit = tar_header(b"././@PaxHeader", b"x", 8000) + padded(pax_record(b"comment", 8000))
    unit += tar_header(b"d/", b"5")
    piece = unit * 113  # ~1 MiB
    archive = gzip_of((piece, 1134), (END, 1))
    assert len(piece) * 1134 > 1024 * MIB
    assert_refused_cheaply(probe(tmp_path, archive))


def test_zip_extra_field_flood_is_refused_before_zipfile_parses_it(tmp_path):
    """200 entries with 64 KiB of empty extra fields each (13 MiB): zipfile's extra parser
    copies the rest of the block per field, quadratic; the old reader spent 4.2 s of CPU,
    then accepted the archive."""
    extra = b"\0\0\0\0" * 16383
    archive = zip_with_directory(central_entry(b"d/", extra) * 200, 200)
    assert_refused_cheaply(probe(tmp_path, archive), "extra fields")


def test_zip_bzip2_bomb_declaring_100_bytes_is_refused_at_listing(tmp_path):
    """About 100 bytes of bzip2 that inflate to 32 MiB (or 400 MiB: the size is the same),
    declared as 100 bytes, since sizes up to 1 KiB skip the ratio check: the old listing
    accepted it, and zipfile's reader inflates a whole compressed chunk per call with no
    output cap, so the worker's read took it all at once (the review's 400 MiB build: over
    400 MiB of memory). LZMA is alike; test_archives.py checks it is refused too."""
    archive = zip_of_one(b"discs/bomb.png", zipfile.ZIP_BZIP2, bzip2_zeros(), 100)
    assert len(archive) < 1024
    assert_refused_cheaply(probe(tmp_path, archive), "bzip2", "only stored and deflate")


def test_the_zip_reader_never_inflates_bzip2_even_if_the_listing_missed_it():
    """The second guard: reading a bzip2 member yields None without inflating it (the old
    reader held all 32 MiB at once before noticing it was more than declared)."""
    archive = zip_of_one(b"discs/bomb.png", zipfile.ZIP_BZIP2, bzip2_zeros(), 100)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        result, peak = traced(lambda: _read_zip_member(opened, opened.infolist()[0]))
    assert result is None and peak < MIB, peak


def test_a_deflate_member_lying_about_its_size_costs_one_piece():
    """256 MiB of deflate declared as 100 bytes passes the listing (nothing to measure a
    ratio on), but zipfile inflates deflate with an output cap of the piece asked for and
    stops at the declared size: the read holds about one 256 KiB piece, never the lot."""
    stream, crc, _ = deflate_of((bytes(MIB), 256))
    archive = zip_of_one(b"discs/1.png", zipfile.ZIP_DEFLATED, stream, 100, crc)
    safe = SafeArchive(archive)
    result, peak = traced(lambda: dict(safe.read({"discs/1.png"})))
    assert result == {"discs/1.png": None} and peak < 2 * MIB, peak


def test_nameless_tar_file_of_2_80_bytes_behind_junk_is_refused_cheaply(tmp_path):
    """The review's shape: 1.1 MB of gzip holding one regular file named ``./`` declaring
    2**80 bytes (base-256), then 10 MiB of random bytes. The old listing skipped the
    nameless entry without counting it and inflated its data to the 1 GiB cap, which the
    junk had let past the ratio: 2.9 s of CPU before a 413. Now its header is refused."""
    header = with_base256_size(tar_header(b"./", b"0"), 2**80)
    junk = random.Random(0).randbytes(10 * MIB)
    archive = gzip_of((header, 1), (b"\x01" * MIB, 1100)) + junk
    assert_refused_cheaply(probe(tmp_path, archive), "'./' is a file with no name")


def test_trailing_junk_does_not_raise_the_ratio_allowance(tmp_path):
    """Seventeen 60 MiB members of one byte value (1020 MiB, under the 1 GiB cap) in 1 MiB
    of gzip, then 10 MiB of random bytes: measured against the upload's length the ratio is
    92:1, and the old reader inflated all of it (2.9 s) and accepted it. Measured against the
    compressed bytes read, it is a bomb a couple of MiB in."""
    pieces = []
    for i in range(17):
        pieces += [(tar_header(b"discs/%d.png" % i, b"0", 60 * MIB), 1), (b"\x01" * MIB, 60)]
    archive = gzip_of(*pieces, (END, 1)) + random.Random(1).randbytes(10 * MIB)
    assert 1020 * MIB / len(archive) < 100
    assert_refused_cheaply(probe(tmp_path, archive), "bomb")


def refused(data: bytes, limits: ArchiveLimits | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        SafeArchive(data, limits)
    assert info.value.field == "dataset" and 400 <= info.value.status < 500
    return info.value


def test_folders_and_extended_headers_count_as_entries():
    """Every header costs work, so every header counts: folders, pax, long names, zip folders."""
    limits = ArchiveLimits(max_entries=5)
    folders = b"".join(tar_header(b"d%d/" % i, b"5") for i in range(5))
    assert "more than 5 entries" in refused(folders + image_member() + END, limits).message
    pax = tar_header(b"././@PaxHeader", b"x", 512) + pax_record(b"path", 512)
    assert "more than 5 entries" in refused(pax * 6 + image_member() + END, limits).message
    records = b"".join(central_entry(b"d%d/" % i) for i in range(5))
    assert "more than 5 entries" in refused(zip_with_directory(records, 5), limits).message


def test_inflated_bytes_are_counted_whatever_the_headers_declare():
    """Global pax headers declare no member at all, yet 5,000 of them inflate to 40 MiB
    from a few KiB: the ratio stops the stream. (The old reader recursed once per
    consecutive extended header and died with RecursionError, a 500.)"""
    unit = tar_header(b"././@PaxHeader", b"g", 8000) + padded(pax_record(b"comment", 8000))
    error = refused(gzip_of((unit * 100, 50), (image_member() + END, 1)))
    assert error.status == 413 and "bomb" in error.message
    error = refused(
        gzip_of((unit, 200), (image_member() + END, 1)), ArchiveLimits(max_total_bytes=MIB)
    )
    assert error.status == 413 and "unpacks to more than" in error.message


def test_malformed_pax_records_are_refused():
    """Records are 'LEN key=value\\n' with a short length that matches; anything else is
    refused rather than skipped, as tarfile would."""
    for payload in [b"1" * 400, b"99999999 path=x\n", b"13 path=abc\n", b"7 path\n", b"0 =\n"]:
        pax = tar_header(b"././@PaxHeader", b"x", len(payload)) + padded(payload)
        assert "malformed record" in refused(pax + image_member() + END).message, payload


def test_zip_entries_with_many_extra_fields_are_refused():
    extra = b"\0\0\0\0" * 17  # small, but more fields than any real writer adds
    assert "extra fields" in refused(zip_with_directory(central_entry(b"d/", extra), 1)).message


def _nothing_left(settings, queued: int) -> None:
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert redis.Redis.from_url(settings.redis_url).llen("gpu") == queued
    storage = Path(settings.storage_url.removeprefix("file://"))
    assert not storage.exists() or not any(storage.rglob("*.*"))


def test_hostile_archive_is_refused_at_submit(client, settings):
    """Through the real app: a 4xx naming the dataset, well under 2 s of CPU, and no job."""
    archive = huge_extended_header(b"x")
    queued = redis.Redis.from_url(settings.redis_url).llen("gpu")
    start = time.process_time()
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "fine_tune", "dataset": (io.BytesIO(archive), "data.tar.gz")},
        content_type="multipart/form-data",
    )
    cpu = time.process_time() - start
    assert response.status_code == 413, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "dataset" and "pax extended header" in error["message"]
    assert cpu < 2.0
    _nothing_left(settings, queued)


def test_nameless_zip_entry_is_a_400_at_submit_not_a_500(client, settings):
    """ZipInfo.is_dir() raises IndexError on an empty name, which nothing mapped: a 500.
    Now the entry is refused like any corrupt member, naming the dataset, and no job."""
    archive = zip_with_directory(central_entry(b""), 1)
    queued = redis.Redis.from_url(settings.redis_url).llen("gpu")
    response = client.post(
        "/api/v1/jobs",
        data={"kind": "fine_tune", "dataset": (io.BytesIO(archive), "data.zip")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["field"] == "dataset" and "a file with no name" in error["message"]
    _nothing_left(settings, queued)
