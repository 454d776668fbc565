import pytest
import tensorflow as tf

from nas_deeplab.data.errors import DataError
from nas_deeplab.io_utils import OutputError
from nas_deeplab.training import flags_common


@pytest.mark.parametrize("exc,want", [
    (flags_common.FlagError("--eval_scales must be positive"), "--eval_scales must be positive"),
    (DataError("a.tfrecord record 3: label 300 x 20 vs image 200 x 20"),
     "a.tfrecord record 3: label 300 x 20 vs image 200 x 20"),
    (OutputError("cannot write /ro/x: read-only"), "cannot write /ro/x: read-only"),
    (FileNotFoundError("--checkpoint_path=/x: no such checkpoint"), "--checkpoint_path=/x: no such checkpoint"),
    # A DataError raised inside tf.data arrives wrapped: only its own line is kept.
    (tf.errors.InvalidArgumentError(None, None, "Traceback ...\nDataError: b.tfrecord record 0: not PNG\n"
                                    "\t [[{{node PyFunc}}]]"), "DataError: b.tfrecord record 0: not PNG"),
])
def test_user_errors_become_one_line(exc, want):
    assert flags_common.user_error_message(exc) == want


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("k"), tf.errors.InternalError(None, None, "oom")])
def test_other_errors_are_not_user_errors(exc):
    assert flags_common.user_error_message(exc) is None


def test_report_user_error_prints_one_line_or_reraises(capsys):
    assert flags_common.report_user_error(flags_common.FlagError("--crop_size: bad"), "train.py") == 2
    assert capsys.readouterr().err == "train.py: error: --crop_size: bad\n"
    with pytest.raises(RuntimeError, match="bug"):
        flags_common.report_user_error(RuntimeError("bug"), "eval.py")
