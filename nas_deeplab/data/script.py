"""The `main` shared by the data set build scripts in datasets/."""

import os
import sys

from absl import app

from nas_deeplab.data.errors import DataError
from nas_deeplab.io_utils import OutputError
from nas_deeplab.training import flags_common


def run(build):
    """app.run a builder: bad input or an unwritable output ends in one clear line, exit status 2
    (the same status every CLI of the project gives a user error)."""
    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            build()
        except (DataError, OutputError) as e:
            print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(main, flags_parser=flags_common.parse_flags_or_exit)
