"""The product's NVML reading, run against recorded device profiles through the fake pynvml."""

from llamafactory_fp8.gpus import read_gpus


def test_h100_is_read_with_capability_memory_and_driver(nvml_profile):
    nvml_profile("h100-sxm")
    inventory = read_gpus({})
    (gpu,) = inventory.gpus
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.compute_capability == (9, 0)
    assert 79 < gpu.memory_total_gib < 80
    assert inventory.driver_version and inventory.cuda_driver_version
    assert gpu.health_problem is None


def test_mig_slices_replace_their_parent_and_inherit_its_capability(nvml_profile):
    nvml_profile("h100-mig-1g10gb")
    inventory = read_gpus({})
    assert [gpu.is_mig_slice for gpu in inventory.gpus] == [True, True]
    assert all(gpu.compute_capability == (9, 0) for gpu in inventory.gpus)
    assert inventory.gpus[0].name.endswith("MIG 1g.10gb")
    assert inventory.notes


def test_no_driver_is_reported_not_raised(nvml_profile):
    nvml_profile("no-gpu")
    inventory = read_gpus({})
    assert inventory.count == 0
    assert "NVML could not start" in inventory.unavailable_reason


def test_cuda_visible_devices_selects_by_index_and_uuid(nvml_profile):
    nvml_profile("h100-a100-mixed")
    assert [g.name for g in read_gpus({"CUDA_VISIBLE_DEVICES": "1"}).gpus] == ["NVIDIA A100-SXM4-80GB"]
    all_gpus = read_gpus({}).gpus
    by_uuid = read_gpus({"CUDA_VISIBLE_DEVICES": all_gpus[0].uuid[:12]})
    assert [g.index for g in by_uuid.gpus] == ["0"]
    assert by_uuid.hidden_by_cuda_visible_devices == 1


def test_empty_cuda_visible_devices_hides_every_gpu(nvml_profile):
    nvml_profile("h100-sxm")
    inventory = read_gpus({"CUDA_VISIBLE_DEVICES": ""})
    assert inventory.count == 0 and inventory.unavailable_reason


def test_uncorrected_ecc_errors_mark_a_gpu_unhealthy(nvml_profile):
    nvml_profile("h100-ecc-errors")
    (gpu,) = read_gpus({}).gpus
    assert gpu.health_problem == "3 uncorrected ECC errors"


def test_consumer_gpu_without_ecc_counters_is_healthy(nvml_profile):
    nvml_profile("rtx4090")
    (gpu,) = read_gpus({}).gpus
    assert gpu.health_problem is None and gpu.compute_capability == (8, 9)
