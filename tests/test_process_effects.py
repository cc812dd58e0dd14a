"""t2i changes nothing process-wide that other code in the process (a server's threads, a user's
notebook) would notice: no umask flips, no global compiler settings, no heavy imports for --help."""

import os
import stat
import subprocess
import sys
import threading

import torch
from conftest import plain_pipeline

from t2i.files import write_new, write_text


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom t2i.cli import main\nsys.argv = ['t2i', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'diffusers', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"


def test_files_get_an_ordinary_mode_without_touching_the_umask(tmp_path, monkeypatch):
    mask = os.umask(0o027)
    os.umask(mask)

    def no_umask(*_):
        raise AssertionError("os.umask was called: it changes the mask for every thread of the process")

    monkeypatch.setattr(os, "umask", no_umask)
    errors, paths = [], []

    def write(index):
        try:
            paths.append(write_text(tmp_path / f"t{index}.txt", "x"))
            paths.append(write_new(tmp_path, (f"n{index}-{k}.png" for k in range(3)), lambda p: p.write_bytes(b"1")))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(paths) == 16
    assert {stat.S_IMODE(path.stat().st_mode) for path in paths} == {0o666 & ~mask}
    assert not list(tmp_path.glob(".*.part")), "no scratch file is left behind"


def test_compile_options_are_given_to_each_compile_and_never_set_process_wide():
    import torch._inductor.config as inductor

    from t2i.models.speed import compile_components, inductor_options

    options = inductor_options(torch.device("cuda"))
    assert options["max_autotune"] and not options["triton.cudagraphs"]
    before = {name: inductor.shallow_copy_dict()[name] for name in options}
    pipe = plain_pipeline()
    compile_components(pipe, torch.device("cuda"))  # lazy: the options are checked now, nothing compiles yet
    assert {name: inductor.shallow_copy_dict()[name] for name in options} == before
    assert inductor_options(torch.device("cpu")) is None
