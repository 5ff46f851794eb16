"""Stage 1, device profiles: what the search optimises *for*.

Reads the machine (or a profile YAML a user or the package ships) and writes a device profile YAML:
identity, compute (FLOP/s per dtype), memory (capacity, budget, bandwidth), features, the runtime and
workload the model is deployed with, and the provenance of every figure. Calibration and search read it.

* :mod:`~toolkit.profiles.schema`: the :class:`DeviceProfile` record and its sections, validated on
  construction; YAML out (``to_yaml``, ``save``).
* :mod:`~toolkit.profiles.files`: the search path (``$TOOLKIT_PROFILES_DIR``, then the shipped profiles in
  ``toolkit/profiles/shipped/``), reading YAML, ``extends:`` merging, :func:`load_profile`.
* :mod:`~toolkit.profiles.machine`: what this machine is (CPU flags, counts, memory; CUDA device), its
  fingerprint and description, :func:`warn_if_foreign`.
* :mod:`~toolkit.profiles.microbench`: :func:`profile_machine`, the matmul and copy microbenchmarks.

Loading a profile and fingerprinting the CPU import neither torch nor anything heavy.
"""

from toolkit.profiles.machine import (
    ForeignProfileWarning,
    check_device,
    describe_current_machine,
    detect,
    fingerprint_current_machine,
    warn_if_foreign,
)
from toolkit.profiles.files import (
    find_profile,
    list_profiles,
    load_profile,
    profile_for_this_machine,
    profile_search_path,
    shipped_profiles_dir,
)
from toolkit.profiles.microbench import profile_machine
from toolkit.profiles.schema import DeviceProfile, Identity, Measured, Spec

__all__ = [
    "DeviceProfile", "Identity", "Measured", "Spec", "ForeignProfileWarning",
    "shipped_profiles_dir", "profile_search_path", "list_profiles", "find_profile", "load_profile",
    "profile_for_this_machine",
    "check_device", "detect", "fingerprint_current_machine", "describe_current_machine", "warn_if_foreign",
    "profile_machine",
]
