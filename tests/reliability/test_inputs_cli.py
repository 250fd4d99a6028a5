"""The command line's error boundary: usage errors of this typer (it raises its bundled click copy's
classes), --version, the bare command, Abort, Ctrl-C, and warnings that would break "one line".
In-process calls of `spotdiff.cli.main` with the file descriptors captured (capfd)."""

from __future__ import annotations

import warnings

import pytest
import typer

from helpers import hostile
from reliability.inputs_common import assert_user_error
from spotdiff import __version__
from spotdiff.cli import main


@pytest.fixture()
def images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults
    (tmp_path / "a.png").write_bytes(hostile.real_png(seed=0))
    (tmp_path / "b.png").write_bytes(hostile.real_png(seed=1))
    return tmp_path / "a.png", tmp_path / "b.png"


def _run(argv, capfd):
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


USAGE = {
    "misspelt_option": (["detect", "a.png", "b.png", "--metod", "cyws"], "No such option: --metod"),
    "missing_argument": (["detect", "a.png"], "Missing argument 'B'"),
    "unknown_command": (["detekt", "a.png", "b.png"], "No such command 'detekt'"),
    "extra_argument": (["detect", "a.png", "b.png", "c.png"], "unexpected extra argument"),
    "option_without_value": (["detect", "a.png", "b.png", "--top-k"], "requires an argument"),
    "stage_unknown_option": (["train", "--epochs", "3"], "No such option: --epochs"),
    "stage_option_without_value": (["pairs", "--params"], "requires an argument"),
    "bad_flag_value": (["evaluate", "--mlflow=maybe"], ""),
    "root_unknown_option": (["--verbose", "detect"], "No such option: --verbose"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_errors_are_one_line_exit_2(images, capfd, tmp_path, case):
    argv, words = USAGE[case]
    rc, out, err = _run(argv, capfd)
    line = assert_user_error(rc, out, err)
    assert words.lower() in line.lower()
    assert "--help`" in line  # says where to look


def test_version_prints_the_package_version(capfd):
    rc, out, err = _run(["--version"], capfd)
    assert rc == 0 and out.strip() == f"spotdiff {__version__}" and err == ""


def test_bare_command_prints_help_and_exits_2(capfd):
    rc, out, err = _run([], capfd)
    assert rc == 2 and "Usage" in out and "detect" in out
    assert "Traceback" not in out + err and "error" not in err


def test_help_still_exits_0(capfd):
    rc, out, err = _run(["detect", "--help"], capfd)
    assert rc == 0 and "--method" in out and "Traceback" not in err


def test_abort_is_one_line_exit_1(images, capfd, monkeypatch):
    import spotdiff.detect

    def abort(*args, **kwargs):
        raise typer.Abort()
    monkeypatch.setattr(spotdiff.detect, "prepare", abort)
    rc, out, err = _run(["detect", *images, "--out", "out"], capfd)
    assert_user_error(rc, out, err, images[0].parent / "out", code=1)


def test_ctrl_c_while_writing_leaves_no_output(images, capfd, monkeypatch, tmp_path):
    """Ctrl-C after the first picture was written: none of the four outputs, no new folder."""
    import spotdiff.imageio

    real = spotdiff.imageio.write_png_to
    calls = []

    def interrupted(path, rgb, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, rgb, *args)
    monkeypatch.setattr(spotdiff.imageio, "write_png_to", interrupted)
    rc, out, err = _run(["detect", *images, "--out", tmp_path / "new" / "out"], capfd)
    line = assert_user_error(rc, out, err, tmp_path / "new", code=130)
    assert "interrupted" in line and len(calls) == 2
    assert not (tmp_path / "new").exists()


def test_warnings_do_not_break_the_one_line(images, capfd, monkeypatch):
    """A library warning (torch, Lightning, OpenCV's Python side) before a user error: still one line."""
    import spotdiff.detect

    real = spotdiff.detect.prepare

    def noisy(*args, **kwargs):
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the "
                      "indexing argument", UserWarning)
        warnings.warn("some numpy thing\nover two lines", RuntimeWarning)
        return real(*args, **kwargs)
    monkeypatch.setattr(spotdiff.detect, "prepare", noisy)
    rc, out, err = _run(["detect", images[0], "missing.png", "--out", "out"], capfd)
    line = assert_user_error(rc, out, err, images[0].parent / "out")
    assert "missing.png" in line
    # after a success they are kept, one line each
    rc, out, err = _run(["detect", *images, "--out", "out"], capfd)
    assert rc == 0
    assert [ln for ln in err.splitlines() if ln.startswith("spotdiff: warning:")] == [
        "spotdiff: warning: UserWarning: torch.meshgrid: in an upcoming release, it will be required to pass "
        "the indexing argument", "spotdiff: warning: RuntimeWarning: some numpy thing"]


def test_opencv_native_messages_do_not_break_the_one_line(images, capfd, tmp_path):
    """A truncated TIFF goes to OpenCV's decoder, whose libtiff prints [ WARN ]/[ERROR] lines on fd 2."""
    (tmp_path / "cut.tif").write_bytes(hostile.encoded("TIFF", 300, 300)[:100_000])
    rc, out, err = _run(["detect", tmp_path / "cut.tif", images[1], "--out", "out"], capfd)
    line = assert_user_error(rc, out, err, tmp_path / "out")
    assert "cut.tif" in line and "truncated" in line
