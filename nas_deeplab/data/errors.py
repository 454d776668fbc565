"""The one error type for bad input data.

A `ValueError` subclass so callers that already catch `ValueError` keep working; the message always
names what was being read (file pattern, TFRecord path and record index, or source image) and what is
wrong with it, because "invalid argument" from deep inside tf.data is useless on a 3000-image set.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data; the message names the file/record and the problem."""
