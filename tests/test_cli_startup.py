"""What a person reads when a CLI starts: TF's start-up chatter filtered (nothing else), the train.py
header, and --help examples that keep their line breaks."""

import os
import subprocess
import sys

from nas_deeplab.cli_startup import filter_startup_lines
from test_train_cli import run_train, tiny_run_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Verbatim lines TF 2.21 prints on a machine without an NVIDIA driver.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796117682.421190   21031 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n",
    "I0000 00:00:1796117682.429131   21031 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.\n",
    "E0000 00:00:1796117685.345720   21031 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]
CUINIT = NOISE[3]


def test_only_the_known_startup_lines_are_dropped():
    other = "E0000 00:00:1.0 1 some_kernel.cc:1] out of memory allocating 12 bytes\n"
    kept, no_driver = filter_startup_lines(NOISE[:2] + [other] + NOISE[2:])
    assert kept == [other] and no_driver
    # With a driver present, a failing cuInit is a real problem and is shown.
    kept, no_driver = filter_startup_lines([NOISE[1], CUINIT])
    assert kept == [CUINIT] and not no_driver


def test_cli_start_shows_no_tf_chatter():
    code = ("from nas_deeplab.cli_startup import import_tensorflow; import_tensorflow(); "
            "import sys; print('marker', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "port.cc" not in p.stderr and "cuInit" not in p.stderr and "absl::InitializeLog" not in p.stderr, \
        p.stderr
    assert p.stderr.strip().splitlines()[-1] == "marker"


def test_train_prints_a_header_before_any_work(tmp_path):
    model, steps = tiny_run_flags(tmp_path)
    rc, out = run_train(model + steps + [f"--train_logdir={tmp_path / 'run'}", "--eval_after_training=false"])
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == f"architecture tiny: a searched cell and path, F=4, from {tmp_path / 'tiny.json'}"
    assert lines[1] == "  path [0, 1]: output stride 8, ASPP rates 2, no decoder"
    assert lines[2] == f"data synthetic, split train (4 examples) from {tmp_path / 'data'}"
    assert lines[3] == f"crop 33x33, batch 2, 2 steps, precision float32; logs in {tmp_path / 'run'}"


def test_help_keeps_the_examples_line_breaks():
    import ast
    for name in ("train", "eval", "export"):   # read, not imported: export.py defines global flags
        with open(os.path.join(ROOT, f"{name}.py"), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()), clean=False)
        continued = [line for line in doc.splitlines() if line.rstrip().endswith("\\")]
        assert continued, name   # "... \" at the end of an example line, as typed in a shell
        assert all(len(line) < 110 for line in doc.splitlines()), name


def test_a_bad_flag_value_is_one_line_and_exit_2_on_every_cli():
    """absl's own flag errors (a value outside an enum, a non-number) end as every user error of the
    CLIs does: one '<program>: error: ...' line naming the flag, exit status 2, no 'FATAL'."""
    for script, flag in (("search.py", "--recompute_cheap_ops=maybe"), ("train.py", "--mixed_precision=fp8"),
                         ("eval.py", "--eval_batch_size=x"), ("export.py", "--precision=int4"),
                         ("datasets/build_synthetic_data.py", "--num_shards=abc")):
        p = subprocess.run([sys.executable, os.path.join(ROOT, script), flag], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
        lines = [ln for ln in filter_startup_lines(p.stderr.splitlines(keepends=True))[0] if ln.strip()]
        name = flag.split("=")[0].lstrip("-")
        assert p.returncode == 2, (script, p.returncode, p.stderr[-1000:])
        assert len(lines) == 1 and lines[0].startswith(f"{os.path.basename(script)}: error: ") \
            and name in lines[0] and "FATAL" not in p.stderr, (script, p.stderr[-1000:])
