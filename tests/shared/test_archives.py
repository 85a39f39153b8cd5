"""Dataset archives: every attack of the issue is refused with a message; good layouts pass."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile

import pytest

from shared.archives import ArchiveLimits, SafeArchive, file_names, safe_name
from shared.dataset_layout import plan_layout
from shared.errors import InputError
from tests.finetune_data import make_tar, make_zip, shape_files

PNG = shape_files(1)["discs/000.png"]


def _refused(data: bytes, limits: ArchiveLimits | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        SafeArchive(data, limits)
    assert info.value.field == "dataset" and info.value.message.startswith("dataset: ")
    return info.value


def _zip_with(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _tar_with(members: list[tarfile.TarInfo], gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for info in members:
            archive.addfile(info, io.BytesIO(PNG) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(PNG)
    return info


@pytest.mark.parametrize(
    "name", ["../evil.png", "ants/../../evil.png", "a/b/../../../x.png", "..\\..\\evil.png"]
)
def test_zip_slip_is_refused(name):
    error = _refused(_zip_with([("ants/1.png", PNG), (name, PNG)]))
    assert "outside the archive" in error.message


@pytest.mark.parametrize("name", ["/etc/evil.png", "C:\\temp\\evil.png", "\\\\server\\x.png"])
def test_absolute_paths_are_refused(name):
    assert "absolute path" in _refused(_zip_with([(name, PNG)])).message


def test_tar_slip_and_absolute_are_refused():
    assert "outside" in _refused(make_tar({"ants/1.png": PNG, "../../x.png": PNG})).message
    assert "absolute" in _refused(make_tar({"/tmp/x.png": PNG}, gz=True)).message


def test_zip_symlink_is_refused():
    link = zipfile.ZipInfo("ants/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert (
        "symbolic link"
        in _refused(_zip_with([("ants/1.png", PNG), (link, b"/etc/passwd")])).message
    )


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(kind):
    link = tarfile.TarInfo("ants/link.png")
    link.type = kind
    link.linkname = "/etc/passwd"
    assert "link" in _refused(_tar_with([_file("ants/1.png"), link])).message


def test_tar_device_and_fifo_are_refused():
    fifo = tarfile.TarInfo("ants/pipe.png")
    fifo.type = tarfile.FIFOTYPE
    assert "not a regular file" in _refused(_tar_with([fifo], gz=True)).message


def test_zip_bomb_is_refused_before_decompressing():
    bomb = _zip_with([("ants/1.png", PNG), ("ants/bomb.png", bytes(20 * 1024 * 1024))])
    assert len(bomb) < 100_000
    error = _refused(bomb)
    assert error.status == 413 and "bomb" in error.message


def test_tar_gz_bomb_is_refused():
    bomb = make_tar({"ants/bomb.png": bytes(8 * 1024 * 1024)}, gz=True)
    error = _refused(bomb)
    assert error.status == 413 and "bomb" in error.message


def test_caps_on_file_count_member_size_and_total():
    files = shape_files(6)
    assert "more than 5 files" in _refused(make_zip(files), ArchiveLimits(max_files=5)).message
    small = ArchiveLimits(max_member_bytes=len(PNG) - 1)
    assert "limit per file" in _refused(make_tar(files), small).message
    total = ArchiveLimits(max_total_bytes=3 * len(PNG))
    assert "unpacks to more than" in _refused(make_tar(files, gz=True), total).message


def test_corrupt_and_non_archives_are_refused():
    good = make_zip(shape_files(5))
    assert "corrupt" in _refused(good[: len(good) // 2]).message
    gz = make_tar(shape_files(5), gz=True)
    assert "corrupt" in _refused(gz[: len(gz) // 2]).message
    assert "corrupt" in _refused(b"PK\x03\x04" + b"\x00" * 100).message
    error = _refused(b"just some text, not an archive")
    assert error.status == 415
    assert "empty" in _refused(b"").message


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicates_and_encryption_are_refused():
    assert "twice" in _refused(_zip_with([("a/1.png", PNG), ("a/1.png", PNG)])).message
    data = bytearray(_zip_with([("ants/1.png", PNG)]))
    # set the "encrypted" flag bit in the local and central headers
    for marker in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(marker)
        offset = 6 if marker == b"PK\x03\x04" else 8
        data[at + offset] |= 0x1
    assert "encrypted" in _refused(bytes(data)).message


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_good_archives_list_and_read(fmt):
    files = shape_files(5, prefix="my-data/")
    files["my-data/README.txt"] = b"hello"
    files["__MACOSX/my-data/discs/._000.png"] = b"junk"
    data = make_zip(files) if fmt == "zip" else make_tar(files, gz=fmt == "tar.gz")
    archive = SafeArchive(data)
    assert archive.format == fmt
    names = file_names(archive.members)
    assert "__MACOSX/my-data/discs/._000.png" not in names
    layout = plan_layout(names)
    assert layout.classes == ["discs", "squares"] and layout.val is None
    assert layout.ignored == ["my-data/README.txt"]
    wanted = {path for path, _ in layout.train}
    read = dict(archive.read(wanted))
    assert set(read) == wanted and read["my-data/discs/000.png"] == files["my-data/discs/000.png"]


def test_damaged_member_reads_as_none():
    files = shape_files(5)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
    data = bytearray(buffer.getvalue())
    at = data.find(files["discs/002.png"][40:80])  # stored, so findable: break its bytes
    assert at > 0
    data[at : at + 8] = b"\xff" * 8
    contents = dict(SafeArchive(bytes(data)).read(set(files)))
    assert contents["discs/002.png"] is None
    assert sum(v is None for v in contents.values()) == 1


def test_safe_name_normalises():
    assert safe_name("./ants//1.png") == "ants/1.png"
    assert safe_name("ants\\1.png") == "ants/1.png"


def test_layout_train_val_and_class_rules():
    files = shape_files(6, prefix="train/") | shape_files(2, seed=3, prefix="val/")
    layout = plan_layout(list(files))
    assert layout.classes == ["discs", "squares"]
    assert len(layout.train) == 12 and len(layout.val) == 4
    with pytest.raises(InputError, match="at least 2 classes"):
        plan_layout([f"ants/{i}.jpg" for i in range(10)])
    with pytest.raises(InputError, match="no images"):
        plan_layout(["ants/readme.txt", "bees/notes.md"])
    with pytest.raises(InputError, match="at least 5 training images"):
        plan_layout([f"ants/{i}.jpg" for i in range(10)] + ["bees/1.jpg"])
    with pytest.raises(InputError, match="val/ has classes"):
        plan_layout(list(files) + ["val/wasps/1.png"])


def _tar_in_format(files: dict[str, bytes], fmt: int, gz: bool) -> bytes:
    """A tar written by tarfile in ``fmt``, with a folder entry before each class's files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w", format=fmt) as archive:
        for folder in sorted({name.rsplit("/", 1)[0] for name in files}):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_non_ascii_names_list_and_read(fmt, gz):
    """Our own header parser reads what tarfile writes: pax records, GNU long names, ustar
    prefixes, folders, for names past the 100-byte field and outside ASCII."""
    prefix = "données/" + "a-rather-long-folder-name/" * (4 if fmt == tarfile.USTAR_FORMAT else 6)
    files = shape_files(5, prefix=prefix)
    archive = SafeArchive(_tar_in_format(files, fmt, gz))
    assert [m.name for m in archive.members] == list(files)
    assert all(len(name.encode()) > 100 for name in files)
    assert dict(archive.read(set(files))) == files


def _set_size_base256(tar: bytes, at: int = 0) -> bytes:
    """The header at ``at`` with its size in GNU base-256 form and the checksum redone."""
    block = bytearray(tar[at : at + 512])
    size = int(block[124:136].split(b"\0")[0], 8)
    block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return tar[:at] + bytes(block) + tar[at + 512 :]


def test_base256_sizes_and_several_gzip_members_read_alike():
    files = shape_files(5)
    tar = make_tar(files)
    assert dict(SafeArchive(_set_size_base256(tar)).read(set(files))) == files
    cut = 3 * 512
    members = gzip.compress(tar[:cut]) + gzip.compress(tar[cut:])  # gzip allows several
    archive = SafeArchive(members)
    assert archive.format == "tar.gz" and dict(archive.read(set(files))) == files


def test_damaged_tar_headers_are_corrupt():
    tar = bytearray(make_tar(shape_files(5)))
    second = 512 + len(PNG) + (-len(PNG) % 512)
    tar[second + 10] ^= 0xFF  # a name byte: the checksum no longer matches
    assert "bad checksum" in _refused(bytes(tar)).message
    whole = make_tar(shape_files(5))
    assert "corrupt" in _refused(whole[: len(whole) // 2 + 100]).message
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 13
    orphan = pax.tobuf(tarfile.USTAR_FORMAT) + b"13 path=abc\n\n".ljust(512, b"\0")
    assert "no member after it" in _refused(orphan + bytes(1024)).message


def test_sparse_files_and_folders_with_data_are_refused():
    sparse = _file("ants/holes.png")
    sparse.type = tarfile.GNUTYPE_SPARSE
    assert "not a regular file" in _refused(_tar_with([_file("ants/1.png"), sparse])).message
    pax_sparse = _file("ants/holes.png")
    pax_sparse.pax_headers = {"GNU.sparse.size": "1000"}
    tar = _tar_with([_file("ants/1.png"), pax_sparse])
    assert "not a regular file" in _refused(tar).message
    folder = bytearray(_tar_with([tarfile.TarInfo("ants")]))
    folder[156:157] = b"5"
    folder[124:136] = b"%011o\0" % 512
    folder[148:156] = b" " * 8
    folder[148:156] = b"%06o\0 " % sum(folder[:512])
    assert "declares 512 bytes" in _refused(bytes(folder)).message


def _with_zip64_end(data: bytes) -> bytes:
    """The zip with zip64 end records in front of its end record, which then defers to them."""
    at = data.rindex(b"PK\x05\x06")
    _, _, _, count, total, size, offset, _ = struct.unpack_from("<4s4H2LH", data, at)
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, total, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    full = (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return data[:at] + end64 + locator + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, *full, 0)


def test_zip_end_records_are_found_as_zipfile_finds_them():
    """The directory walk must cover what zipfile parses: with a comment after the end
    record, and with zip64 end records."""
    files = shape_files(5)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
        archive.comment = b"a comment, so the end record is not the last 22 bytes"
    for data in (buffer.getvalue(), _with_zip64_end(make_zip(files))):
        assert dict(SafeArchive(data).read(set(files))) == files


@pytest.mark.parametrize(
    ("method", "label"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")]
)
def test_zip_members_compressed_other_than_stored_or_deflate_are_refused(method, label):
    """zipfile inflates bzip2 and LZMA with no cap on the output (see the hostile tests);
    the listing refuses them, naming the method and the ones accepted."""
    member = zipfile.ZipInfo("ants/2.png")
    member.compress_type = method
    error = _refused(_zip_with([("ants/1.png", PNG), (member, PNG)]))
    assert error.status == 400 and f"'ants/2.png' is compressed with {label}" in error.message
    assert "only stored and deflate zip members are accepted" in error.message


def _zip_entry_renamed(name_length: int) -> bytes:
    """A good zip whose last central-directory entry keeps only ``name_length`` bytes of
    its name (the rest becomes extra-field bytes, so every offset stays right)."""
    data = bytearray(_zip_with([("ants/1.png", PNG), ("x", b"")]))
    at = data.rindex(b"PK\x01\x02")
    old, extra = struct.unpack_from("<2H", data, at + 28)
    struct.pack_into("<2H", data, at + 28, name_length, extra + old - name_length)
    return bytes(data)


def test_nameless_members_are_refused_not_a_crash():
    """A zip entry with an empty name made ZipInfo.is_dir() raise IndexError: a 500 at
    submit. A file whose name normalises to nothing is refused in both formats, since a
    tar reader would inflate its data uncounted to pass over it."""
    error = _refused(_zip_entry_renamed(0))
    assert error.status == 400 and "member '' is a file with no name" in error.message
    for name in ("./", ".", "./."):  # tarfile writes each as a regular file ('0')
        error = _refused(_tar_with([_file("ants/1.png"), _file(name)], gz=True))
        assert f"member {name!r} is a file with no name" in error.message


def test_folders_named_dot_are_still_skipped():
    """``tar -czf x.tgz .`` starts with a ``./`` folder, and zips may hold one: folders."""
    folder = tarfile.TarInfo("./")
    folder.type = tarfile.DIRTYPE
    archive = SafeArchive(_tar_with([folder, _file("ants/1.png")], gz=True))
    assert [m.name for m in archive.members] == ["ants/1.png"]
    archive = SafeArchive(_zip_with([("./", b""), ("ants/1.png", PNG)]))
    assert [m.name for m in archive.members] == ["ants/1.png"]


def test_only_zero_padding_may_follow_the_gzip_stream():
    """gzip(1) accepts zero padding after the last member; anything else is junk the ratio
    must not be measured against, and is refused."""
    files = shape_files(5)
    tgz = make_tar(files, gz=True)
    assert dict(SafeArchive(tgz + bytes(10_000)).read(set(files))) == files
    for junk in (b"junk", bytes(100) + b"\x01"):
        error = _refused(tgz + junk)
        assert error.status == 400 and "not gzip data follow the gzip stream" in error.message
