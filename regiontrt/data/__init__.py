"""The data layer: a region's calibration and validation data, read one way everywhere.

:class:`DataSource` reads batches from arrays, ``.npz``/``.npy`` files, folders or iterables,
checked against the model's inputs; :mod:`regiontrt.data.stats` summarises them for drift checks.

May import: ``errors``, ``graph``. Never the layers above.
"""

from regiontrt.data.sources import DataSource, profile_split, split_batches

__all__ = ["DataSource", "profile_split", "split_batches"]
