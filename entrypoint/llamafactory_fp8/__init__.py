"""llamafactory-fp8: inspect the GPUs, decide the precision, render the Accelerate config, launch LLaMA-Factory."""

__version__ = "0.1.0"
