"""Memory estimates, so that oversized networks fail with a message instead of an OOM crash."""

from __future__ import annotations

import psutil
import torch

#: bytes per trainable float32 parameter during Adam training: weight, gradient, two moments
BYTES_PER_TRAINED_PARAMETER = 16
#: fraction of the free memory a model may plan to use
USABLE_FRACTION = 0.8


def available_memory(device: str | torch.device = "cpu") -> int:
    """Free memory in bytes on ``device``.

    Host RAM available to new processes without swapping (:func:`psutil.virtual_memory`, on
    Linux, macOS and Windows alike) for the CPU; free GPU memory
    (:func:`torch.cuda.mem_get_info`) for a CUDA device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    """Format a byte count as GiB/MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_training_memory(
    n_parameters: int,
    activation_floats: int,
    *,
    device: str | torch.device = "cpu",
    hint: str = "",
) -> None:
    """Raise :class:`MemoryError` when training a network would not fit on ``device``.

    Parameters
    ----------
    n_parameters
        Number of trainable parameters.
    activation_floats
        Number of float32 activations held for one minibatch (forward and backward).
    device
        Where the network will train.
    hint
        Advice appended to the message (e.g. which argument makes the network smaller).
    """
    needed = n_parameters * BYTES_PER_TRAINED_PARAMETER + activation_floats * 4
    free = available_memory(device)
    if needed > USABLE_FRACTION * free:
        raise MemoryError(
            f"Training this network needs about {format_bytes(needed)} ({n_parameters:,} parameters) but "
            f"only {format_bytes(free)} is free on {torch.device(device)}. {hint}".strip()
        )
