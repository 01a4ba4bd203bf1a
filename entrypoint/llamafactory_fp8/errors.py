"""Errors a user can fix: each is printed as one line and ends the program with its own exit code."""

USAGE_EXIT_CODE = 64


class LaunchError(Exception):
    """Base of the user-facing errors; `exit_code` is what the process returns."""

    exit_code = 1


class FP8Unavailable(LaunchError):
    exit_code = 2


class NoGpu(LaunchError):
    exit_code = 3


class BF16Unavailable(LaunchError):
    exit_code = 4


class ConfigMissing(LaunchError):
    exit_code = 10


class ConfigUnparsable(LaunchError):
    exit_code = 11


class ConfigNotMapping(LaunchError):
    exit_code = 12


class ConfigInvalid(LaunchError):
    exit_code = 13


class OutputNotWritable(LaunchError):
    exit_code = 14


class AccelerateConfigInvalid(LaunchError):
    exit_code = 15


class DistributedEnvInvalid(LaunchError):
    exit_code = 16
