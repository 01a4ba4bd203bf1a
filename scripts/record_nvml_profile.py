"""Record what real NVML reports about this machine's GPUs, in the format tests/fake_nvml replays.
Run it on a GPU machine: python scripts/record_nvml_profile.py > tests/nvml_profiles/NAME.json"""

import json
import sys

import pynvml


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def record() -> dict:
    pynvml.nvmlInit()
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                mig_mode = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig_mode = False
            try:
                ecc = pynvml.nvmlDeviceGetTotalEccErrors(
                    handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
                )
            except pynvml.NVMLError:
                ecc = None
            mig_devices = []
            if mig_mode:
                for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                    try:
                        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                    except pynvml.NVMLError:
                        continue
                    mig_devices.append(
                        {
                            "name": _text(pynvml.nvmlDeviceGetName(mig)),
                            "uuid": _text(pynvml.nvmlDeviceGetUUID(mig)),
                            "memory_total": pynvml.nvmlDeviceGetMemoryInfo(mig).total,
                        }
                    )
            devices.append(
                {
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                    "compute_capability": list(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),
                    "memory_total": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
                    "mig_mode": mig_mode,
                    "ecc_uncorrected": ecc,
                    "mig_devices": mig_devices,
                }
            )
        return {
            "source": "recorded with scripts/record_nvml_profile.py",
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
            "devices": devices,
        }
    finally:
        pynvml.nvmlShutdown()


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=2)
    sys.stdout.write("\n")
