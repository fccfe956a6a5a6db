"""The shapes layer: which input shapes an engine accepts, and variable-length buckets.

Optimization profiles (:class:`ShapeProfile`, :class:`Profile`), the profiles of a build given
none (:func:`choose_profiles`), and width buckets whose output lengths are read or measured from
the model (:class:`Bucketing`).

May import: ``errors``, ``graph``. Never the precision, runtime or higher layers.
"""

from regiontrt.shapes.buckets import Bucketing
from regiontrt.shapes.defaults import ProfileChoice, choose_profiles, headroom_profile
from regiontrt.shapes.profiles import Profile, Range, ShapeProfile, select_profile

__all__ = ["Bucketing", "Profile", "ProfileChoice", "Range", "ShapeProfile", "choose_profiles",
           "headroom_profile", "select_profile"]
