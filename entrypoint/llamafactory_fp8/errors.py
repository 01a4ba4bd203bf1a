"""Every exit code the launcher ends with, in one place: the errors a user can fix (each printed as one line) and
the outcomes of a run. The README's exit-code table and the Kubernetes Jobs' podFailurePolicy follow this file."""

FINISHED_EXIT_CODE = 0
TRAINING_FAILED_EXIT_CODE = 1  # the trainer's own error is above the launcher's last line
USAGE_EXIT_CODE = 64  # EX_USAGE (sysexits.h): unknown flag or value
NODE_LOST_EXIT_CODE = 69  # EX_UNAVAILABLE (sysexits.h): another node of the job stopped answering
DISK_FULL_EXIT_CODE = 74  # EX_IOERR (sysexits.h): the output disk filled up, during a checkpoint save most likely
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, nothing lost; run the same command again


class LaunchError(Exception):
    """Base of the user-facing errors: `exit_code` is what the process returns, `meaning` its row in the README."""

    exit_code = TRAINING_FAILED_EXIT_CODE
    meaning = ""
    passes = False  # whether the same command may succeed later unchanged (a Job then retries it)


class FP8Unavailable(LaunchError):
    exit_code = 2
    meaning = "FP8 refused (GPU below compute capability 8.9, no backend, unsupported stage, quantized model)"


class NoGpu(LaunchError):
    exit_code = 3
    meaning = "no GPU visible (pass `--allow-cpu` to train on the CPU)"


class BF16Unavailable(LaunchError):
    exit_code = 4
    meaning = "BF16 refused (GPU below compute capability 8.0)"


class ConfigMissing(LaunchError):
    exit_code = 10
    meaning = "training YAML missing"


class ConfigUnparsable(LaunchError):
    exit_code = 11
    meaning = "training YAML not valid YAML"


class ConfigNotMapping(LaunchError):
    exit_code = 12
    meaning = "training YAML not a mapping"


class ConfigInvalid(LaunchError):
    exit_code = 13
    meaning = "training YAML missing a required key, a key of the wrong kind, or a bad override"


class OutputNotWritable(LaunchError):
    exit_code = 14
    meaning = "output_dir, or the state folder (`LLAMAFACTORY_FP8_STATE_DIR`), not writable"


class AccelerateConfigInvalid(LaunchError):
    exit_code = 15
    meaning = "Accelerate config missing, invalid, or disagreeing with the chosen precision"


class DistributedEnvInvalid(LaunchError):
    exit_code = 16
    meaning = "multi-node environment incomplete (`NNODES` without `MASTER_ADDR` or node rank)"


class ModelGated(LaunchError):
    exit_code = 17
    meaning = "model gated or private on the Hub and this token has no access (401/403)"


class ModelNotFound(LaunchError):
    exit_code = 18
    meaning = "model, its revision or its config.json not found (404), or its hub's client not installed"


class SettingInvalid(LaunchError):
    exit_code = 19
    meaning = "an environment setting the launcher reads (contract.py) has a value it cannot use"


class DoesNotFit(LaunchError):
    exit_code = 20
    meaning = "the run does not fit in GPU memory with any strategy (pass `--no-memory-check` to try anyway)"


class OutputNotOnVolume(LaunchError):
    exit_code = 21
    meaning = "inside a container, output_dir is not on a mounted volume: its model and checkpoints would be lost"


class RunFinished(LaunchError):
    exit_code = 22
    meaning = "output_dir holds a finished run: choose a new output_dir, or `--restart` (the old run is moved aside)"


class RunInProgress(LaunchError):
    exit_code = 23
    meaning = "another launcher is running in output_dir (on this node)"
    passes = True  # a replaced pod's launcher may still be ending


class ResumeMismatch(LaunchError):
    exit_code = 24
    meaning = "the checkpoint to resume from is not of this model or fine-tuning type"


class Unsupported(LaunchError):
    exit_code = 25
    meaning = (
        "a stage or option this image cannot run (PPO, KTransformers, Megatron, Ray, multimodal, a quantization "
        "kernel or `report_to` integration it lacks, LLaMA-Factory's v1 schema)"
    )


class DatasetUnusable(LaunchError):
    exit_code = 26
    meaning = (
        "a dataset the run names is not in dataset_info.json, or its file is missing, unreadable, empty or not valid "
        "JSON; a Hub dataset under `HF_HUB_OFFLINE`; a `dataset_dir` that does not exist"
    )


class InstallIncomplete(LaunchError):
    exit_code = 27
    meaning = "LLaMA-Factory's key schema or demo datasets missing, or made for another release: run scripts/bootstrap"


def documented_exit_codes() -> dict[int, str]:
    """Every code the launcher can return, with its meaning; 128+N (a second signal, or the trainer killed by signal N)
    comes on top."""
    refusals = {error.exit_code: error.meaning for error in LaunchError.__subclasses__()}
    return {
        FINISHED_EXIT_CODE: "training finished",
        TRAINING_FAILED_EXIT_CODE: "training failed: the trainer's own error is above the launcher's last line",
        **refusals,
        USAGE_EXIT_CODE: "usage error (unknown flag or value)",
        NODE_LOST_EXIT_CODE: "another node of the job was lost (killed, or stopped answering for `ddp_timeout`): "
        "run every node's command again to resume",
        DISK_FULL_EXIT_CODE: "the disk under output_dir is full: free space, then run the same command again to resume "
        "from the last complete checkpoint",
        STOPPED_EXIT_CODE: "stopped on request (SIGTERM, SIGINT or SIGHUP), after saving a checkpoint or before the "
        "first step",
    }
