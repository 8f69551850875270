"""tusfast.storage.layout.DirLayout and tusfast.config (sizes, durations, Config validation)."""

from __future__ import annotations

import calendar
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tusfast.config import Config, parse_duration, parse_optional_duration, parse_size
from tusfast.core.protocol import ALL_EXTENSIONS, DEFAULT_EXTENSIONS, REQUIRES, ProtocolSettings
from tusfast.storage.layout import DirLayout

# 2026-01-05 03:04:05 UTC: every field needs zero padding.
WHEN = calendar.timegm((2026, 1, 5, 3, 4, 5, 0, 0, 0))


# ---- DirLayout -------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "when", "expected"), [
    ("{year}/{month}/{day}", WHEN, "2026/01/05"),
    ("{year}/{month}/{day}/{hour}/{minute}", WHEN, "2026/01/05/03/04"),
    ("{year}-{month}-{day}", WHEN, "2026-01-05"),
    ("/{year}/{month}/", WHEN, "2026/01"),                       # outer slashes are dropped
    ("uploads/{year}", WHEN, "uploads/2026"),
    ("static", WHEN, "static"),
    ("{year}{month}{day}", WHEN, "20260105"),
    ("{year}/{month}/{day}", WHEN + 0.999, "2026/01/05"),          # fractions of a second are fine
    ("{year}/{month}/{day}/{hour}", calendar.timegm((2025, 12, 31, 23, 59, 59, 0, 0, 0)), "2025/12/31/23"),
    ("{year}/{month}/{day}/{hour}", calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)), "2026/01/01/00"),
    ("{year}/{month}/{day}", 0, "1970/01/01"),
    ("{day}/{day}", WHEN, "05/05"),
])
def test_dir_layout_directory(template: str, when: float, expected: str) -> None:
    assert DirLayout(template).directory(when) == expected


def test_dir_layout_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    if not hasattr(time, "tzset"):
        pytest.skip("no tzset")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")          # UTC+14: local date differs from UTC here
    time.tzset()
    try:
        assert DirLayout("{year}/{month}/{day}/{hour}").directory(WHEN) == "2026/01/05/03"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("template", [
    "{yaer}/{month}",                 # unknown field
    "{second}",
    "{year}/{id}",
    "{}",
    "{0}",
    "{year[0]}",
    "{year.real}",
    "..",
    "{year}/..",
    "../{year}",
    "{year}/../../etc",
    ".",
    "{year}/./{month}",
    "",
    "/",
    "//",
    "{year}//{month}",                # empty part
    "{year",                          # broken format string
])
def test_dir_layout_rejects(template: str) -> None:
    with pytest.raises(ValueError):
        DirLayout(template)


@pytest.mark.parametrize("template", [
    "{year:/>8}/x",                   # pads with '/' -> "////2026/x": an absolute path, outside the upload dir
    "{day:/<4}{month}",               # "05//01": an empty part
    "{year:d}",                       # ValueError on every creation, not at startup
])
def test_dir_layout_rejects_format_specs_and_conversions(template: str) -> None:
    # Fields must be plain {name}. Anything else is rejected up front, or at the very least must still
    # produce a relative path of normal parts.
    try:
        layout = DirLayout(template)
    except ValueError:
        return
    directory = layout.directory(WHEN)
    path = PurePosixPath(directory)
    assert not path.is_absolute(), directory
    assert all(part not in ("", ".", "..") for part in directory.split("/")), directory


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_dir_layout_always_relative_digits(when: float) -> None:
    directory = DirLayout("{year}/{month}/{day}/{hour}/{minute}").directory(when)
    parts = directory.split("/")
    assert [len(part) for part in parts] == [4, 2, 2, 2, 2]
    assert all(part.isdigit() for part in parts)


# ---- parse_size ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0),
    ("1073741824", 1073741824),
    ("100", 100),
    ("100b", 100),
    ("100B", 100),
    ("1k", 1024),
    ("1K", 1024),
    ("1KB", 1024),
    ("1KiB", 1024),
    ("100M", 100 * 1024**2),
    ("100m", 100 * 1024**2),
    ("2GiB", 2 * 1024**3),
    ("1g", 1024**3),
    ("1G", 1024**3),
    ("3T", 3 * 1024**4),
    ("5 MB", 5 * 1024**2),
    (" 7M ", 7 * 1024**2),
])
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", " ", "M", "-1", "-1M", "+1", "1.5G", "1,000", "1e6", "10X", "10P",
                                  "10MBB", "10 M B", "ten", "0x10", "1 2", "GB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["", "k", "M", "g", "T"]),
       st.sampled_from(["", "b", "B", "iB", "ib"]))
def test_parse_size_property(number: int, unit: str, suffix: str) -> None:
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit.lower()]
    if not unit and suffix.lower() == "ib":
        return
    assert parse_size(f"{number}{unit}{suffix}") == number * factor


# ---- parse_duration --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0.0),
    ("30", 30.0),
    ("30s", 30.0),
    ("30S", 30.0),
    ("500ms", 0.5),
    ("500MS", 0.5),
    ("5m", 300.0),
    ("24h", 86400.0),
    ("2d", 172800.0),
    ("1.5s", 1.5),
    ("0.25h", 900.0),
    (" 10 s ", 10.0),
])
def test_parse_duration_accepts(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "ms", "-1", "-1s", "+1s", "1.s", ".5s", "1e3", "5x", "5 min",
                                  "1 hour", "1h30m", "nan", "inf", "1,5s", "10ss"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---- Config ----------------------------------------------------------------------------------

def test_config_defaults() -> None:
    config = Config()
    assert config.port == 1080 and config.workers == 1
    assert config.base_path == "/files/"
    assert isinstance(config.upload_dir, Path)
    assert config.extensions == ALL_EXTENSIONS
    assert config.public_url is None
    assert config.expire_after == 7 * 86400             # expiration is on by default...
    assert "expiration" in config.extensions             # ...and so announced
    assert config.disable_download is False


@pytest.mark.parametrize("kwargs", [
    {"port": -1},
    {"port": 65536},
    {"port": 100000},
    {"workers": 0},
    {"workers": -3},
    {"tls_cert": "cert.pem"},
    {"tls_key": "key.pem"},
    {"max_size": -1},
    {"public_url": "example.org/files/"},
    {"public_url": "/files/"},
    {"public_url": "ftp://example.org/files/"},
    {"public_url": "https://"},
    {"public_url": "https:///files/"},
    {"public_url": "files"},
    {"public_url": ""},
    {"disabled_extensions": ("concatenate",)},          # not tus extension names
    {"disabled_extensions": ("crc32",)},
    {"disabled_extensions": ("termination", "bogus")},
    {"disabled_extensions": ("Creation",)},
])
def test_config_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Config(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"port": 0},
    {"port": 65535},
    {"workers": 8},
    {"tls_cert": "cert.pem", "tls_key": "key.pem"},
    {"max_size": 0},
    {"public_url": "https://example.org/files/"},
    {"public_url": "http://127.0.0.1:8080/"},
    {"disabled_extensions": ALL_EXTENSIONS},
    {"disabled_extensions": ("concatenation",)},
    {"disabled_extensions": ("checksum",)},
    {"disabled_extensions": ("expiration",)},
    {"expire_after": None},
    {"expire_after": 60.0},
    {"disable_download": True},
])
def test_config_accepts(kwargs: dict) -> None:
    config = Config(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(("public_url", "expected"), [
    ("https://example.org/files/", "https://example.org/files/"),
    ("https://example.org/files", "https://example.org/files/"),
    ("https://example.org/files///", "https://example.org/files/"),
    ("https://example.org", "https://example.org/"),
])
def test_config_public_url_gets_one_trailing_slash(public_url: str, expected: str) -> None:
    assert Config(public_url=public_url).public_url == expected


@pytest.mark.parametrize(("base_path", "expected"), [
    ("/files/", "/files/"),
    ("files", "/files/"),
    ("/files", "/files/"),
    ("files/", "/files/"),
    ("/api/v1/uploads", "/api/v1/uploads/"),
    ("/", "/"),
    ("", "/"),
    ("//", "/"),
])
def test_config_normalises_base_path(base_path: str, expected: str) -> None:
    assert Config(base_path=base_path).base_path == expected


def test_config_upload_dir_becomes_path() -> None:
    assert Config(upload_dir="some/dir").upload_dir == Path("some/dir")   # type: ignore[arg-type]


def all_but(*names: str) -> tuple[str, ...]:
    return tuple(name for name in ALL_EXTENSIONS if name not in names)


@pytest.mark.parametrize(("disabled", "enabled"), [
    ((), ALL_EXTENSIONS),
    (("termination",), all_but("termination")),
    (("creation-with-upload",), all_but("creation-with-upload")),
    (("creation-defer-length",), all_but("creation-defer-length")),
    # turning a base off turns off what is built on it (checklist item 55)
    (("creation",), all_but("creation", "creation-with-upload", "creation-defer-length")),
    (("creation", "termination"), all_but("creation", "creation-with-upload", "creation-defer-length",
                                          "termination")),
    (("checksum",), all_but("checksum", "checksum-trailer")),
    (("checksum-trailer",), all_but("checksum-trailer")),
    (("concatenation",), all_but("concatenation", "concatenation-unfinished")),
    (("concatenation-unfinished",), all_but("concatenation-unfinished")),
    (("expiration",), all_but("expiration")),
    (("creation", "checksum", "concatenation"), ("expiration", "termination")),
    (ALL_EXTENSIONS, ()),
])
def test_config_extensions(disabled: tuple[str, ...], enabled: tuple[str, ...]) -> None:
    assert Config(disabled_extensions=disabled).extensions == enabled


@pytest.mark.parametrize("expire_after", [None, 0, 0.0])
def test_config_without_expiry_drops_expiration(expire_after: float | None) -> None:
    # `--expire-after 0/off` -> None: nothing expires, so expiration is not announced (checklist item 57)
    assert Config(expire_after=expire_after).extensions == DEFAULT_EXTENSIONS
    assert Config(expire_after=expire_after, disabled_extensions=("checksum",)).extensions == \
        tuple(name for name in DEFAULT_EXTENSIONS if name not in ("checksum", "checksum-trailer"))


@given(st.sets(st.sampled_from(ALL_EXTENSIONS)), st.sampled_from([None, 1.0, 7 * 86400.0]))
def test_config_extensions_always_make_valid_protocol_settings(disabled: set[str],
                                                              expire_after: float | None) -> None:
    config = Config(disabled_extensions=tuple(sorted(disabled)), expire_after=expire_after)
    extensions = config.extensions
    assert not set(extensions) & disabled
    assert list(extensions) == [name for name in ALL_EXTENSIONS if name in extensions]   # canonical order
    for name in extensions:
        assert REQUIRES.get(name, name) in extensions
    # Exactly what the app hands to the protocol layer: it must never be rejected.
    settings = ProtocolSettings(extensions=extensions,
                                expire_after=expire_after if "expiration" in extensions else None)
    assert settings.extensions == extensions


@pytest.mark.parametrize(("text", "expected"), [
    ("0", None), ("off", None), ("OFF", None), ("never", None), ("none", None), ("", None), (" off ", None),
    ("7d", 7 * 86400.0), ("30m", 1800.0), ("90", 90.0),
])
def test_parse_optional_duration(text: str, expected: float | None) -> None:
    assert parse_optional_duration(text) == expected


@pytest.mark.parametrize("text", ["-1d", "soon", "7 days"])
def test_parse_optional_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_optional_duration(text)


@pytest.mark.parametrize("expire_after", [-1.0, -86400.0, float("nan")])
def test_config_rejects_non_positive_expire_after(expire_after: float) -> None:
    # A negative (or NaN) period would announce expiration and make every unfinished upload expire
    # at once (or never); Config validates every other number it holds (port, workers, max_size).
    with pytest.raises(ValueError):
        Config(expire_after=expire_after)
