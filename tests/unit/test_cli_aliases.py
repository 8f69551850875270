"""Drop-in names: tusd's single-dash flags, rustus's flags and RUSTUS_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tusfast.cli import build_parser, config_from_args
from tusfast.config import Config


def parse(*argv: str) -> Config:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for name in list(os.environ):
        if name.startswith(("TUSFAST_", "RUSTUS_")):
            monkeypatch.delenv(name)


def test_tusd_flags() -> None:
    config = parse("-host", "0.0.0.0", "-port=8080", "-upload-dir", "/srv/up", "-base-path", "/api/up/",
                   "-max-size", "1000", "-behind-proxy", "-unix-sock", "/run/t.sock", "-shutdown-timeout", "5s",
                   "-disable-download", "-disable-termination", "-hooks-http", "http://app/hook",
                   "-hooks-enabled-events", "pre-create,post-finish")
    assert (config.host, config.port, config.upload_dir, config.base_path) == ("0.0.0.0", 8080, Path("/srv/up"),
                                                                                "/api/up/")
    assert config.max_size == 1000 and config.behind_proxy and config.unix_socket == "/run/t.sock"
    assert config.shutdown_timeout == 5 and config.disable_download
    assert "termination" not in config.extensions
    assert config.hooks_http == "http://app/hook"


def test_rustus_flags() -> None:
    config = parse("--url", "/api/upload/resumable_upload", "--data-dir", "/data", "--dir-structure",
                   "{year}/{month}/{day}", "--max-file-size", "2048", "--cors", "https://a.example",
                   "--hooks-http-urls", "http://app/hook", "--hooks-http-proxy-headers", "Cookie,X-Api-Key")
    assert config.base_path == "/api/upload/resumable_upload/" and config.upload_dir == Path("/data")
    assert config.dir_layout == "{year}/{month}/{day}" and config.max_size == 2048
    assert config.cors_origins == ("https://a.example",)
    assert config.hooks_http_forward_headers == ("Cookie", "X-Api-Key")


def test_rustus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RUSTUS_SERVER_PORT": "1081", "RUSTUS_PREFIX": "/files", "RUSTUS_DATA_DIR": "/d",
                        "RUSTUS_DIR_STRUCTURE": "{year}/{month}", "RUSTUS_LOG_LEVEL": "WARN",
                        "RUSTUS_BEHIND_PROXY": "true", "RUSTUS_HOOKS_FORMAT": "tusd",
                        "RUSTUS_SENTRY_SAMPLE_RATE": "0.5"}.items():
        monkeypatch.setenv(name, value)
    config = parse()
    assert (config.port, config.base_path, config.upload_dir) == (1081, "/files/", Path("/d"))
    assert config.dir_layout == "{year}/{month}" and config.log_level == "warning" and config.behind_proxy
    assert config.hooks_format == "tusd-v1"      # rustus's "tusd" payloads are tusd v1's shape
    assert config.sentry_sample_rate == 0.5


def test_precedence_flag_then_tusfast_then_rustus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUSTUS_SERVER_PORT", "1")
    assert parse().port == 1
    monkeypatch.setenv("TUSFAST_PORT", "2")
    assert parse().port == 2
    assert parse("--port", "3").port == 3


def test_empty_rustus_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUSTUS_CORS", "")
    assert parse().cors_origins == ("*",)
