"""Upload decoding, storage safety and settings parsing."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import InputError
from shared.images import inspect_image, load_rgb
from shared.settings import load_settings
from shared.storage import LocalStorage, job_key, open_storage

JOB = "0123456789abcdef0123456789abcdef"


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image,fmt",
    [
        (Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG"),
        (Image.new("L", (20, 10), 128), "PNG"),
        (Image.new("I;16", (20, 10), 40000), "PNG"),
        (Image.new("P", (20, 10), 3), "GIF"),
        (Image.new("CMYK", (20, 10), (0, 255, 0, 0)), "JPEG"),
        (Image.new("RGB", (20, 10), (1, 2, 3)), "WEBP"),
    ],
)
def test_every_mode_becomes_rgb_of_the_same_size(image, fmt):
    data = _encode(image, fmt)
    info = inspect_image(data, field="content", max_bytes=10**6, max_pixels=10**6)
    assert info.format == fmt and (info.width, info.height) == (20, 10)
    rgb = load_rgb(data)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)


def test_sixteen_bit_keeps_its_brightness_and_alpha_becomes_white():
    grey = load_rgb(_encode(Image.new("I;16", (4, 4), 65535), "PNG"))
    assert grey.getpixel((0, 0)) == (255, 255, 255)
    clear = load_rgb(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"))
    assert clear.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encode(image, "JPEG", exif=exif)
    assert load_rgb(data).size == (10, 30)


def test_type_is_sniffed_not_trusted_and_pixels_are_capped():
    with pytest.raises(InputError) as info:
        inspect_image(b"GIF89a but not really", field="style", max_bytes=1000, max_pixels=10)
    assert info.value.status == 415 and info.value.field == "style"
    with pytest.raises(InputError) as info:
        inspect_image(
            _encode(Image.new("RGB", (100, 100)), "PNG"),
            field="content",
            max_bytes=10**6,
            max_pixels=9999,
        )
    assert info.value.status == 413


def test_storage_refuses_escapes_and_writes_atomically(tmp_path):
    storage = LocalStorage(tmp_path)
    for bad in ("../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            job_key(JOB, bad)
    with pytest.raises(ValueError):
        job_key("../../etc", "passwd")
    with pytest.raises(ValueError):
        storage.local_path("../outside")
    key = job_key(JOB, "result.png")
    assert storage.put_bytes(key, b"abc") == 3
    with storage.open(key) as handle:
        assert handle.read() == b"abc"
    assert storage.exists(key)
    assert [p.name for p in (tmp_path / "jobs" / JOB).iterdir()] == ["result.png"]
    storage.delete_prefix(f"jobs/{JOB}")
    assert not storage.exists(key)
    with pytest.raises(ValueError, match="ATELIER_STORAGE_URL"):
        open_storage("ftp://nowhere")


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ATELIER_VAR_DIR", "/srv/atelier")
    monkeypatch.setenv("ATELIER_MAX_SIZE", "1024")
    settings = load_settings()
    assert settings.database_url == "sqlite:////srv/atelier/atelier.db"
    assert settings.max_size == 1024 and settings.redis_url is None
    assert settings.soft_time_limit < settings.time_limit < settings.visibility_timeout
    monkeypatch.setenv("ATELIER_MAX_SIZE", "big")
    with pytest.raises(ValueError, match="ATELIER_MAX_SIZE must be a number"):
        load_settings()
    monkeypatch.setenv("ATELIER_MAX_SIZE", "1024")
    monkeypatch.setenv("ATELIER_DEVICE", "tpu")
    with pytest.raises(ValueError, match="ATELIER_DEVICE"):
        load_settings()
    monkeypatch.setenv("ATELIER_DEVICE", "cpu")
    with pytest.raises(RuntimeError, match="ATELIER_REDIS_URL"):
        _ = load_settings().broker_url


def test_event_streams_leave_threads_for_the_api(monkeypatch):
    """Each open stream holds a gunicorn thread: a limit that could take them all is refused,
    and `atelier web` starts as many threads as the setting says."""
    from worker.embedded import web_command

    monkeypatch.setenv("ATELIER_WEB_THREADS", "8")
    monkeypatch.setenv("ATELIER_MAX_STREAMS", "8")
    with pytest.raises(ValueError, match="ATELIER_MAX_STREAMS .* below ATELIER_WEB_THREADS"):
        load_settings().validate()
    monkeypatch.setenv("ATELIER_MAX_STREAMS", "6")
    command = web_command("127.0.0.1", 8000)
    assert command[command.index("--threads") + 1] == "8"
    monkeypatch.setenv("ATELIER_WEB_THREADS", "0")
    with pytest.raises(ValueError, match="ATELIER_WEB_THREADS"):
        load_settings().validate()
