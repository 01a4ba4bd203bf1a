"""A stand-in for nvidia-ml-py's `pynvml` that replays a recorded GPU profile (tests/nvml_profiles/*.json).

Tests put this folder first on PYTHONPATH (or swap the module in), so the product's real NVML-reading code runs
unchanged against the recorded shape of an H100, an A100, a MIG slice or no GPU. FAKE_NVML_PROFILE names the
profile file; a profile with "init_error" fails nvmlInit as a machine without the NVIDIA driver does."""

import json
import os
from types import SimpleNamespace

NVML_DEVICE_MIG_ENABLE = 1
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    def __str__(self):
        return "NVML Shared Library Not Found"


class NVMLError_NotSupported(NVMLError):
    def __str__(self):
        return "Not Supported"


class NVMLError_NotFound(NVMLError):
    def __str__(self):
        return "Not Found"


class NVMLError_Uninitialized(NVMLError):
    def __str__(self):
        return "Uninitialized"


_profile = None


def _load():
    with open(os.environ["FAKE_NVML_PROFILE"]) as handle:
        return json.load(handle)


def _require_init():
    if _profile is None:
        raise NVMLError_Uninitialized()
    return _profile


def nvmlInit():
    global _profile
    profile = _load()
    if profile.get("init_error"):
        raise NVMLError_LibraryNotFound()
    _profile = profile


def nvmlShutdown():
    global _profile
    _profile = None


def nvmlSystemGetDriverVersion():
    return _require_init()["driver_version"]


def nvmlSystemGetCudaDriverVersion_v2():
    return _require_init()["cuda_driver_version"]


def nvmlDeviceGetCount():
    return len(_require_init()["devices"])


def nvmlDeviceGetHandleByIndex(index):
    devices = _require_init()["devices"]
    if index >= len(devices):
        raise NVMLError_NotFound()
    return SimpleNamespace(record=devices[index], parent=None)


def nvmlDeviceGetName(handle):
    return handle.record["name"]


def nvmlDeviceGetUUID(handle):
    return handle.record["uuid"]


def nvmlDeviceGetCudaComputeCapability(handle):
    record = handle.parent.record if handle.parent else handle.record
    return tuple(record["compute_capability"])


def nvmlDeviceGetMemoryInfo(handle):
    total = handle.record["memory_total"]
    return SimpleNamespace(total=total, free=total, used=0)


def nvmlDeviceGetMigMode(handle):
    if handle.parent is not None or "mig_mode" not in handle.record:
        raise NVMLError_NotSupported()
    mode = NVML_DEVICE_MIG_ENABLE if handle.record["mig_mode"] else 0
    return mode, mode


def nvmlDeviceGetMaxMigDeviceCount(handle):
    return 7


def nvmlDeviceGetMigDeviceHandleByIndex(handle, index):
    slices = handle.record.get("mig_devices", [])
    if index >= len(slices):
        raise NVMLError_NotFound()
    return SimpleNamespace(record=slices[index], parent=handle)


def nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type):
    count = None if handle.parent else handle.record.get("ecc_uncorrected")
    if count is None:
        raise NVMLError_NotSupported()
    return count
