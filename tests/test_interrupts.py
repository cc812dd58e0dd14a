"""Ctrl-C (SIGINT) as a person presses it: one line saying so, exit 130, no traceback, nothing half-written,
and for a fine-tune, which checkpoint is intact and the command that goes on from it."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image


def _run_until(command: list[str], ready, timeout: float = 240) -> subprocess.CompletedProcess:
    """Start `command`, press Ctrl-C once `ready()` holds, and wait for it to end."""
    # a process started in the background by a shell ignores SIGINT; a terminal's does not
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "it ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_ctrl_c_during_generate_says_so_and_keeps_whole_images(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"shape {i}" for i in range(200)))
    result = _run_until([sys.executable, "-m", "t2i", "generate", "--prompts-file", str(prompts), "--model", "tiny",
                         "--device", "cpu", "--steps", "4", "--seed", "1", "--out", str(out)],
                        lambda: len(list(out.glob("*.png"))) >= 2)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "t2i: interrupted"
    assert "Traceback" not in result.stderr
    written = sorted(out.glob("*.png"))
    assert 2 <= len(written) < 200 and not list(out.glob(".*"))  # no scratch file left
    for path in written:
        Image.open(path).load()  # every file is whole


def test_ctrl_c_during_finetune_names_the_intact_checkpoint_and_how_to_go_on(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), ("red", "blue", "green")[i % 3]).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {('red', 'blue', 'green')[i % 3]} square")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "t2i", "finetune", "--data", str(data), "--output", str(run), "--model", "tiny",
               "--resolution", "32", "--batch-size", "2", "--max-steps", "5000", "--checkpoint-every", "2",
               "--cache-dir", str(tmp_path / "cache")]
    result = _run_until(command, lambda: (run / "checkpoints" / "checkpoint-000004").is_dir())
    assert result.returncode == 130, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    intact = sorted(p for p in (run / "checkpoints").iterdir())
    assert all(p.name.startswith("checkpoint-") for p in intact), "no partial checkpoint folder is left"
    assert last.startswith(f"t2i: interrupted; {intact[-1]} is intact; go on with: t2i finetune --data {data}")
    assert last.endswith("--cache-dir " + str(tmp_path / "cache") + " --resume latest")
    assert "Traceback" not in result.stderr and not (run / "pytorch_lora_weights.safetensors").exists()
    assert Path(intact[-1] / "state.json").is_file()
