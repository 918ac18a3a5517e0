"""``rpg ui`` as a command: what it checks before the model loads, what it says when it listens
beyond this computer, and how it stops on Ctrl-C (a real server process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the 'ui' extra (uvicorn) is not installed")

from rpg.cli import main
from rpg.ui.serve import exposure_warning


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make loading a model a test failure; the list records any attempt."""
    calls: list[Any] = []

    def load(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("rpg.cli.ui.load_rpg", load)
    return calls


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary-files folder, to see what the command leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_busy_port_is_exit_2_before_the_model_loads_and_leaves_nothing(
    taken_port: int, no_model: list[Any], own_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ui", "--port", str(taken_port)]) == 2
    err = capsys.readouterr().err
    assert f"port {taken_port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "serving" not in err and "Traceback" not in err
    assert no_model == []
    assert list(own_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
        (["--port", "70000"], "--port must be from 0 to 65535"),
        (["--plan-timeout", "0"], "--plan-timeout must be a positive number"),
        (["--plan-timeout", "nan"], "--plan-timeout must be a positive number"),
        (["--allow-origin", "evil.example"], "--allow-origin: 'evil.example' is not an origin"),
        (["--allow-origin", "http://x.example/path"], "--allow-origin"),
    ],
)
def test_bad_server_options_are_usage_errors_before_the_model_loads(
    argv: list[str], message: str, no_model: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ui", *argv]) == 2
    assert message in capsys.readouterr().err
    assert no_model == []


def test_out_naming_a_file_or_an_unwritable_folder_fails_before_the_model_loads(
    tmp_path: Path, no_model: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "images.png"
    a_file.write_bytes(b"x")
    assert main(["ui", "--port", "0", "--out", str(a_file)]) == 2
    assert f"--out {a_file}: is a file, not a folder" in capsys.readouterr().err
    assert main(["ui", "--port", "0", "--out", str(a_file / "sub")]) == 2
    assert "part of the path is a file" in capsys.readouterr().err
    if os.geteuid() == 0:
        read_only = Path("/sys")  # even root cannot create files there
    else:
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o555)
    assert main(["ui", "--port", "0", "--out", str(read_only)]) == 2
    assert f"--out {read_only}: cannot write images there" in capsys.readouterr().err
    assert no_model == []


def test_out_folders_made_for_a_failed_start_are_removed(
    tmp_path: Path, no_model: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "images"
    assert main(["ui", "--port", "0", "--out", str(out)]) == 1  # the model load "fails"
    assert no_model and not (tmp_path / "new").exists()


def test_options_must_be_spelled_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--ho", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --ho" in capsys.readouterr().err


def _serve_nothing(monkeypatch: pytest.MonkeyPatch, tiny_rpg: Any) -> dict[str, Any]:
    """Load the session's tiny model instead, and stop where serving would start."""
    seen: dict[str, Any] = {}

    def serve(app: Any, sock: socket.socket, **kwargs: Any) -> int:
        seen["address"] = sock.getsockname()
        seen["app"] = app
        return 0

    monkeypatch.setattr("rpg.cli.ui.load_rpg", lambda *a, **k: tiny_rpg)
    monkeypatch.setattr("rpg.ui.serve.serve", serve)
    return seen


def test_listening_beyond_loopback_warns_what_is_exposed(
    tiny_rpg: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = _serve_nothing(monkeypatch, tiny_rpg)
    out = tmp_path / "images"
    assert main(["ui", "--host", "0.0.0.0", "--port", "0", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "rpg ui: warning: listening on every network interface" in err
    assert tiny_rpg.model in err and str(out) in err and "no login" in err
    assert seen["address"][0] == "0.0.0.0"
    # The default stays on this computer and says nothing.
    assert main(["ui", "--port", "0", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert seen["address"][0] == "127.0.0.1"


def test_exposure_warning_names_the_address() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert exposure_warning(host, 7860, "m", "/o") is None
    text = exposure_warning("192.168.1.20", 7860, "sdxl", "/o")
    assert text is not None and "listening on 192.168.1.20, port 7860" in text and "sdxl" in text


# ----------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Silent:
    """A TCP server that accepts connections and never answers (a hung Ollama)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def launch(tiny_sd_path: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m rpg ui`` on tiny-sd with temporary files under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "RPG_CACHE_DIR": str(tiny_sd_path.parent),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp),
    }
    port = free_port()
    command = [sys.executable, "-m", "rpg", "ui", "--planner", "rules", "--device", "cpu"]
    command += ["--port", str(port), *extra]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, port


@pytest.fixture
def server(tiny_sd_path: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``python -m rpg ui`` on tiny-sd with an Ollama planner that never answers."""
    silent = Silent()
    tmp = tmp_path / "tmp"
    proc, port = launch(tiny_sd_path, tmp, "--ollama-host", f"http://127.0.0.1:{silent.port}")
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(url + "api/config", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "rpg ui did not answer within 180 s"
                time.sleep(0.25)
        yield proc, url, tmp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        silent.close()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def post(url: str, body: dict[str, Any], timeout: float = 60) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.load(exc)}


def test_ctrl_c_stops_the_server_during_a_render_and_a_hung_plan(
    server: tuple[subprocess.Popen[str], str, Path],
) -> None:
    proc, url, tmp = server
    assert len(list(tmp.glob("rpg-ui-*"))) == 1  # the default output folder
    job = post(url + "api/generate", {"request": {"prompt": "a cat", "steps": 1000, "seed": 1}})
    deadline = time.monotonic() + 60
    while get(url + f"api/jobs/{job['id']}")["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # A plan request waits on the Ollama server that never answers.
    answers: list[Any] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            post(url + "api/plan", {"prompt": "a dog", "planner": "ollama"})
        ),
        daemon=True,
    )
    waiting.start()
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "rpg ui: stopping" in err
    assert "Traceback" not in err and "Error" not in err.replace("error:", ""), err
    waiting.join(10)
    assert answers and answers[0]["status"] == 503, answers
    assert list(tmp.glob("rpg-ui-*")) == []  # the temporary output folder is gone


def test_a_second_ctrl_c_ends_the_process_at_once(
    server: tuple[subprocess.Popen[str], str, Path],
) -> None:
    proc, _, tmp = server
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert list(tmp.glob("rpg-ui-*")) == []


@pytest.mark.parametrize(("planner", "option"), [("rules", {}), ("ollama", {"host": "http://h:1"})])
def test_ollama_host_reaches_every_ollama_planner_and_never_the_bind_address(
    planner: str, option: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpg.cli import build_parser
    from rpg.cli.common import planner_options
    from rpg.cli.ui import _planner_args

    monkeypatch.setenv("OLLAMA_HOST", "restored after the test")
    argv = ["ui", "--planner", planner, "--ollama-host", "http://h:1", "--host", "0.0.0.0"]
    args = build_parser().parse_args(argv)
    assert planner_options(_planner_args(args)) == option  # the default planner's options
    assert os.environ["OLLAMA_HOST"] == "http://h:1"  # what ollama planners picked later read
    assert args.host == "0.0.0.0"


def test_ctrl_c_while_the_model_loads_exits_130_without_a_traceback(
    tiny_sd_path: Path, tmp_path: Path
) -> None:
    proc, port = launch(tiny_sd_path, tmp_path / "tmp")
    try:
        # The port is bound before the model loads: once it takes connections, loading runs.
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert list((tmp_path / "tmp").glob("rpg-ui-*")) == []
