"""dagserve's command line: flags to Config, bad input, the pid file, --start and --stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path

import pytest

from dagserve.engine import cli
from dagserve.engine.config import Config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test in its own working dir, with its own temp dir for pid files, and no TS_*
    environment leaking in."""
    work = tmp_path / "work"
    work.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for key in list(os.environ):
        if key.startswith("TS_"):
            monkeypatch.delenv(key)
    return work


def parse(*argv: str) -> Config:
    return cli.config_from_args(cli.build_parser().parse_args(list(argv)))


# ---- flags -> Config -----------------------------------------------------------------------

def test_defaults_without_flags(isolated):
    cfg = parse("--start")
    assert cfg.workdir == isolated.resolve()
    assert cfg.model_store is None and cfg.workflow_store is None
    assert cfg.load_models == () and cfg.load_workflows == ()
    assert cfg.snapshots is True
    assert cfg.disable_token_authorization is False
    assert cfg.enable_model_api is False
    assert cfg.foreground is False
    assert cfg.config_file is None and cfg.log_config is None and cfg.plugins_path is None


def test_every_flag(isolated):
    (isolated / "store").mkdir()
    (isolated / "wf").mkdir()
    (isolated / "plugins").mkdir()
    (isolated / "log.json").write_text("{}")
    (isolated / "config.properties").write_text("job_queue_size=7\ninference_address=http://127.0.0.1:9080\n")
    cfg = parse("--start", "--ts-config", "config.properties", "--model-store", "store",
                "--workflow-store", "wf", "--models", "a=a.mar", "b.mar",
                "--workflows", "w.war", "x.war", "--ncs", "--log-config", "log.json",
                "--plugins-path", "plugins", "--disable-token-auth", "--enable-model-api",
                "--foreground", "--cpp-log-config", "cpp.log")
    assert cfg.config_file == (isolated / "config.properties").resolve()
    assert cfg.job_queue_size == 7
    assert cfg.inference_address == "http://127.0.0.1:9080"
    assert cfg.model_store == (isolated / "store").resolve()
    assert cfg.workflow_store == (isolated / "wf").resolve()
    assert cfg.load_models == ("a=a.mar", "b.mar")
    assert cfg.load_workflows == ("w.war", "x.war")
    assert cfg.snapshots is False
    assert cfg.log_config == (isolated / "log.json").resolve()
    assert cfg.plugins_path == (isolated / "plugins").resolve()
    assert cfg.disable_token_authorization is True
    assert cfg.enable_model_api is True
    assert cfg.foreground is True


def test_aliases(isolated):
    cfg = parse("--no-config-snapshots", "--ppath", "p", "--disable-token", "--model-api-enabled")
    assert cfg.snapshots is False
    assert cfg.plugins_path == (isolated / "p").resolve()
    assert cfg.disable_token_authorization is True and cfg.enable_model_api is True
    assert parse("--dt").disable_token_authorization is True


def test_workflow_store_defaults_to_model_store(isolated):
    cfg = parse("--model-store", "store")
    assert cfg.workflow_store == cfg.model_store == (isolated / "store").resolve()


def test_models_all(isolated):
    assert parse("--models", "all").load_models == ("all",)


def test_flags_override_config_file_and_absent_flags_do_not(isolated):
    (isolated / "c.properties").write_text(
        "disable_token_authorization=true\nenable_model_api=true\nmodel_store=fromfile\n")
    cfg = parse("--ts-config", "c.properties")
    assert cfg.disable_token_authorization is True  # not reset by the absent flag
    assert cfg.enable_model_api is True
    assert cfg.model_store == (isolated / "fromfile").resolve()
    cfg = parse("--ts-config", "c.properties", "--model-store", "flag")
    assert cfg.model_store == (isolated / "flag").resolve()


# ---- bad input -----------------------------------------------------------------------------

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_model_store(isolated, capsys):
    assert cli.main(["--start", "--model-store", "nope"]) == 1
    line = one_error_line(capsys)
    assert "model store directory not found" in line and "nope" in line


def test_missing_workflow_store(isolated, capsys):
    (isolated / "store").mkdir()
    assert cli.main(["--start", "--model-store", "store", "--workflow-store", "nowf"]) == 1
    assert "workflow store directory not found" in one_error_line(capsys)


def test_missing_config_file(isolated, capsys):
    assert cli.main(["--start", "--ts-config", "absent.properties"]) == 1
    line = one_error_line(capsys)
    assert "absent.properties" in line


def test_bad_config_value(isolated, capsys):
    (isolated / "c.properties").write_text("job_queue_size=lots\n")
    assert cli.main(["--foreground", "--ts-config", "c.properties"]) == 1
    assert "job_queue_size must be an integer" in one_error_line(capsys)


def test_bad_address(isolated, capsys):
    (isolated / "c.properties").write_text("management_address=localhost\n")
    assert cli.main(["--start", "--ts-config", "c.properties"]) == 1
    assert "address must look like" in one_error_line(capsys)


def test_missing_log_config(isolated, capsys):
    assert cli.main(["--start", "--log-config", "log.json"]) == 1
    assert "--log-config file not found" in one_error_line(capsys)


def test_local_models_need_a_model_store(isolated, capsys):
    assert cli.main(["--start", "--models", "a.mar"]) == 1
    assert "--model-store is required" in one_error_line(capsys)


def test_url_models_need_no_model_store(isolated):
    cfg = parse("--models", "r=https://example.com/r.mar", "all")
    cli.validate(cfg)  # raises nothing


def test_start_and_stop_exclusive(isolated, capsys):
    assert cli.main(["--start", "--stop"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_unknown_flag(isolated, capsys):
    assert cli.main(["--bogus"]) == 2
    assert "--bogus" in capsys.readouterr().err


def test_version(isolated, capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dagserve Version is ")


# ---- foreground ----------------------------------------------------------------------------

def fake_server_module(monkeypatch, run):
    """Put a module with ``run`` in place of dagserve.engine.server (the real one is not needed to
    test the CLI around it)."""
    import dagserve.engine

    module = types.ModuleType("dagserve.engine.server")
    module.run = run
    monkeypatch.setitem(sys.modules, "dagserve.engine.server", module)
    monkeypatch.setattr(dagserve.engine, "server", module, raising=False)


def test_foreground_runs_server_and_owns_pid_file(isolated, monkeypatch):
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        record = cli.read_pid_file(cli.pid_file_path())
        seen["pid"] = record.pid if record else None
        return 3

    fake_server_module(monkeypatch, fake_run)
    (isolated / "store").mkdir()
    assert cli.main(["--start", "--foreground", "--model-store", "store", "--ncs"]) == 3
    assert seen["cfg"].foreground is True
    assert seen["cfg"].snapshots is False
    assert seen["cfg"].model_store == (isolated / "store").resolve()
    assert seen["pid"] == os.getpid()
    assert not cli.pid_file_path().exists()


def test_foreground_removes_pid_file_when_server_raises(isolated, monkeypatch):
    def boom(cfg):
        raise RuntimeError("boom")

    fake_server_module(monkeypatch, boom)
    with pytest.raises(RuntimeError):
        cli.main(["--foreground"])
    assert not cli.pid_file_path().exists()


# ---- pid file ------------------------------------------------------------------------------

def test_pid_file_path_depends_on_workdir(tmp_path):
    a = cli.pid_file_path(tmp_path / "a")
    assert a == cli.pid_file_path(tmp_path / "a" / ".." / "a")
    assert a != cli.pid_file_path(tmp_path / "b")
    assert a.parent == Path(tempfile.gettempdir())
    assert a.name.startswith("dagserve-") and a.suffix == ".pid"


def test_pid_file_refuses_second_live_owner_and_replaces_stale(isolated):
    path = cli.pid_file_path()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cli.write_pid_file(path, sleeper.pid)
        with pytest.raises(cli.AlreadyRunning):
            cli.write_pid_file(path)
    finally:
        sleeper.kill()
        sleeper.wait()
    record = cli.write_pid_file(path)  # the sleeper is gone: stale, replaced
    assert cli.read_pid_file(path) == record and record.pid == os.getpid()
    cli.remove_pid_file(path, pid=sleeper.pid)  # not ours: left alone
    assert path.exists()
    cli.remove_pid_file(path)
    assert not path.exists()


def test_reused_pid_is_not_alive(isolated):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    record = cli.PidRecord(os.getpid(), "1")  # our pid, another start time
    assert not cli.is_alive(record)
    assert cli.is_alive(cli.PidRecord(os.getpid(), cli.process_start_time(os.getpid())))


def test_foreground_refuses_when_already_running(isolated, monkeypatch, capsys):
    fake_server_module(monkeypatch, lambda cfg: pytest.fail("must not run"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cli.write_pid_file(cli.pid_file_path(), sleeper.pid)
        assert cli.main(["--foreground"]) == 1
        assert "already running" in capsys.readouterr().err
        assert cli.main(["--start"]) == 1  # the background start checks too
        assert "already running" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- --stop --------------------------------------------------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from dagserve.engine import cli
    path = Path(sys.argv[1])
    if sys.argv[2] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    cli.write_pid_file(path)
    try:
        print("{started}", flush=True)
        time.sleep(120)
    finally:
        cli.remove_pid_file(path)
""")


def fake_server(pid_path: Path, mode: str = "exit-on-term") -> list[str]:
    script = FAKE_SERVER.format(repo=str(REPO), started=cli.STARTED_LINE)
    return [sys.executable, "-c", script, str(pid_path), mode]


def start_fake(pid_path: Path, mode: str = "exit-on-term") -> subprocess.Popen:
    proc = subprocess.Popen(fake_server(pid_path, mode), stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout.readline().decode().strip() == cli.STARTED_LINE
    return proc


def test_stop_without_server(isolated, capsys):
    assert cli.main(["--stop"]) == 1
    assert "Model server is not currently running." in capsys.readouterr().out


def test_stop_with_stale_pid_file(isolated, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = cli.pid_file_path()
    path.write_text(f"{dead.pid}\n")
    assert cli.main(["--stop"]) == 1
    assert "not currently running" in capsys.readouterr().out
    assert not path.exists()


def test_stop_stops_a_running_server(isolated, capsys):
    path = cli.pid_file_path()
    proc = start_fake(path)
    try:
        assert cli.read_pid_file(path).pid == proc.pid
        assert cli.main(["--stop"]) == 0
        assert "Model server stopped." in capsys.readouterr().out
        assert proc.wait(timeout=10) == 0  # it exited on SIGTERM, cleanly
        assert not path.exists()
        assert cli.main(["--stop"]) == 1
    finally:
        proc.kill()
        proc.wait()


def test_stop_kills_a_server_that_ignores_sigterm(isolated, capsys):
    path = cli.pid_file_path()
    proc = start_fake(path, "ignore-term")
    try:
        assert cli.stop(timeout_s=0.3) == 0
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not path.exists()
    finally:
        proc.kill()
        proc.wait()


# ---- --start in the background -------------------------------------------------------------

def test_start_waits_for_started_line(isolated, capsys):
    cfg = parse("--start")
    path = cli.pid_file_path()
    assert cli.start_background(cfg, ["--start"], command=fake_server(path)) == 0
    assert capsys.readouterr().out.strip() == cli.STARTED_LINE
    record = cli.read_pid_file(path)
    assert record is not None and cli.is_alive(record)
    assert cli.STARTED_LINE in (isolated / "logs" / cli.STDOUT_LOG).read_text()
    assert cli.main(["--start"]) == 1  # already running
    assert cli.main(["--stop"]) == 0
    deadline = time.monotonic() + 10
    while cli.is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cli.is_alive(record)


def test_start_reports_a_child_that_dies(isolated, capsys):
    cfg = parse("--start")
    command = [sys.executable, "-c",
               "import sys; print('loading'); print('cannot bind port 8080', file=sys.stderr); "
               "sys.exit(3)"]
    assert cli.start_background(cfg, ["--start"], command=command) == 1
    err = capsys.readouterr().err
    assert "failed to start (exit code 3)" in err
    assert "cannot bind port 8080" in err and "loading" in err


def test_start_gives_up_after_startup_timeout(isolated, capsys):
    (isolated / "c.properties").write_text("default_startup_timeout=1\n")
    cfg = parse("--start", "--ts-config", "c.properties")
    command = [sys.executable, "-c", "import time; print('still loading', flush=True); "
                                     "time.sleep(120)"]
    assert cli.start_background(cfg, ["--start"], command=command) == 1
    err = capsys.readouterr().err
    assert "did not start within 1 s" in err and "still loading" in err


def test_default_child_command_runs_this_cli_in_foreground():
    cmd = cli.server_command(["--start", "--models", "a.mar", "b.mar"])
    assert cmd[:3] == [sys.executable, "-m", "dagserve.engine.cli"]
    assert cmd[3:] == ["--models", "a.mar", "b.mar", "--foreground"]
    args = cli.build_parser().parse_args(cmd[3:])
    assert args.foreground and not args.start and args.models == ["a.mar", "b.mar"]


def test_module_entry_point(isolated):
    out = subprocess.run([sys.executable, "-m", "dagserve.engine.cli", "--stop"], cwd=isolated,
                         env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": tempfile.gettempdir()},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "not currently running" in out.stdout


FOREGROUND_WITH_SLOW_SERVER = textwrap.dedent("""
    import sys, time, types
    sys.path.insert(0, {repo!r})
    import dagserve.engine
    from dagserve.engine import cli

    def run(cfg):
        print("{started}", flush=True)
        time.sleep(120)
        return 0

    module = types.ModuleType("dagserve.engine.server")
    module.run = run
    sys.modules["dagserve.engine.server"] = dagserve.engine.server = module
    sys.exit(cli.main(["--foreground"]))
""")


def test_foreground_removes_pid_file_on_sigterm(isolated):
    """Even before the server has its own signal handlers, SIGTERM leaves no pid file."""
    script = FOREGROUND_WITH_SLOW_SERVER.format(repo=str(REPO), started=cli.STARTED_LINE)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=isolated, stdout=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": tempfile.gettempdir()})
    try:
        assert proc.stdout.readline().decode().strip() == cli.STARTED_LINE
        path = cli.pid_file_path()
        assert cli.read_pid_file(path).pid == proc.pid
        assert cli.main(["--stop"]) == 0
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert not path.exists()
    finally:
        proc.kill()
        proc.wait()
