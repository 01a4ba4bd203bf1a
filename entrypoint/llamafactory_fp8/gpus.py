"""Read what the GPUs are through NVML: the one place this project talks to the driver."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pynvml


@dataclass(frozen=True)
class Gpu:
    """One CUDA-visible unit: a whole GPU, or one MIG slice of a GPU."""

    index: str
    name: str
    uuid: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    is_mig_slice: bool = False
    uncorrected_ecc_errors: int = 0

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_bytes / 2**30

    @property
    def health_problem(self) -> str | None:
        if self.uncorrected_ecc_errors:
            return f"{self.uncorrected_ecc_errors} uncorrected ECC errors"
        return None


@dataclass(frozen=True)
class GpuInventory:
    """Everything NVML said, or why it said nothing."""

    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    unavailable_reason: str | None = None
    hidden_by_cuda_visible_devices: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def count(self) -> int:
        return len(self.gpus)


def read_gpus(environ: os._Environ | dict = os.environ) -> GpuInventory:
    """Ask NVML for every GPU (and MIG slice) this process may use, honouring CUDA_VISIBLE_DEVICES."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return GpuInventory(unavailable_reason=f"NVML could not start ({error})")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = _cuda_version(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        units = [unit for index in range(pynvml.nvmlDeviceGetCount()) for unit in _units_of(index)]
    except pynvml.NVMLError as error:
        return GpuInventory(unavailable_reason=f"NVML failed while reading the GPUs ({error})")
    finally:
        pynvml.nvmlShutdown()

    visible = _filter_visible(units, environ.get("CUDA_VISIBLE_DEVICES"))
    notes = ()
    if any(gpu.is_mig_slice for gpu in visible):
        notes = ("a CUDA process sees one MIG slice at most, so training uses a single process",)
    return GpuInventory(
        gpus=tuple(visible),
        driver_version=driver,
        cuda_driver_version=cuda,
        unavailable_reason=None if visible else "NVML sees no GPU",
        hidden_by_cuda_visible_devices=len(units) - len(visible),
        notes=notes,
    )


def _units_of(index: int) -> list[Gpu]:
    """The GPU at `index`, or its MIG slices when MIG is on (CUDA then sees the slices, not the GPU)."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    if _mig_enabled(handle):
        slices = []
        for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue
            slices.append(_describe(mig, f"{index}:{slot}", capability, is_mig_slice=True))
        return slices
    return [_describe(handle, str(index), capability, is_mig_slice=False)]


def _describe(handle, index: str, capability: tuple[int, int], is_mig_slice: bool) -> Gpu:
    return Gpu(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        compute_capability=capability,
        memory_total_bytes=pynvml.nvmlDeviceGetMemoryInfo(handle).total,
        is_mig_slice=is_mig_slice,
        uncorrected_ecc_errors=_uncorrected_ecc_errors(handle),
    )


def _mig_enabled(handle) -> bool:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError_NotSupported:
        return False
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _uncorrected_ecc_errors(handle) -> int:
    try:
        return pynvml.nvmlDeviceGetTotalEccErrors(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        )
    except pynvml.NVMLError:
        return 0  # consumer GPUs and MIG slices have no ECC counters


def _filter_visible(units: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """Keep the units CUDA_VISIBLE_DEVICES names (by index or UUID), in its order, as CUDA does."""
    if cuda_visible_devices is None:
        return units
    visible = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        match = [u for u in units if token and (u.index == token or u.uuid.startswith(token))]
        if not match:
            break  # CUDA stops at the first entry it cannot resolve
        visible.extend(m for m in match if m not in visible)
    return visible


def _cuda_version(encoded: int) -> str:
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
