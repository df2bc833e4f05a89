"""The service's small parts: the token file, the settings a job may set, the extra's
error, and the client's bounded retries."""

from __future__ import annotations

import os
import stat
import sys
import time

import pytest

import salip
from salip.api.service import SERVER_SETTINGS, job_settings, read_token
from salip.apps.cli import main
from salip.core.errors import ConfigError, ServiceError
from tests.apps.serve.conftest import free_port


def test_the_token_file_is_made_private_and_kept(tmp_path):
    path = tmp_path / "serve" / "token"
    token = read_token(path, create=True)
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path, create=True) == token  # kept across starts
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(path)
    with pytest.raises(ConfigError, match="--token-file"):
        read_token(tmp_path / "absent")


def test_a_job_may_set_the_method_settings_but_not_the_servers():
    allowed = set(job_settings())
    assert {"strategy", "modality", "window", "points_per_side", "series"} <= allowed
    assert not allowed & SERVER_SETTINGS
    assert "sam_checkpoint" in SERVER_SETTINGS and "max_voxels" in SERVER_SETTINGS


def test_serve_without_the_extra_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--data", str(tmp_path / "d"), "--port", str(free_port())]) == 1
    assert "pip install 'salip[serve]'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_client_retries_for_a_bounded_time_then_says_what_failed(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = salip.Client(url, token="t", retry_s=1.5)
    start = time.monotonic()
    with pytest.raises(ServiceError, match=r"cannot reach the salip server .* for 2 s"):
        client.status("00000000-0000-4000-8000-000000000000")
    assert 1.0 < time.monotonic() - start < 10
    with pytest.raises(ConfigError, match="http://"):
        salip.Client("ftp://x", token="t")


def test_segment_server_refuses_what_a_server_run_cannot_do(tmp_path, capsys):
    png = tmp_path / "a.png"
    png.write_bytes(b"x")
    base = ["segment", str(png), "--organ", "liver", "--server", "http://127.0.0.1:9"]
    assert main([*base, "--split", "-o", str(tmp_path / "o")]) == 1
    assert "--server runs one case" in capsys.readouterr().err
    assert main(["segment", str(png), "--organ", "liver", "--token-file", "x"]) == 1
    assert "--token-file is for --server" in capsys.readouterr().err


def test_serve_refuses_bad_settings_before_touching_the_data_folder(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["serve", "--data", str(data), "--workers", "2"]) == 1
    assert "--workers need --engine ray" in capsys.readouterr().err
    assert main(["serve", "--data", str(data), "--port", "0"]) == 1
    assert "--port must be 1-65535" in capsys.readouterr().err
    assert not data.exists()
