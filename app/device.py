"""Where a session computes: the device, the CPU thread count, and the fall-back from GPU to CPU.

Owns: `device_name` (the GPU when there is one, unless this session ran out of its memory),
`cpu_threads` / `configure_threads` ($T2T_LENS_THREADS), and `guarded`, which turns a GPU
out-of-memory error anywhere below a page into a switch of the session to the CPU and a rerun.

May import: torch, streamlit, t2t. Nothing of app/ (every other module of app/ may import this one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import streamlit as st
import torch

import t2t

T = TypeVar("T")


def device_name() -> str:
    """The device this session computes on: the GPU when there is one, unless it ran out of memory."""
    if st.session_state.get("force_cpu"):
        return "cpu"
    return str(t2t.default_device())


THREADS_ENV = "T2T_LENS_THREADS"


def cpu_threads() -> int:
    """Intra-op threads for CPU work: $T2T_LENS_THREADS, else half the cores (at least 1).

    Half, not all: Streamlit runs each script run in its own thread, and with every core busy
    OpenMP's spinning workers wait on each other; on a busy 2-core machine two threads made the
    pages 3 to 20 times slower than one (benchmarks/bench_app.py).
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


def configure_threads(device: str) -> int:
    """Set torch's thread count for this script run's thread (OpenMP's setting is per thread)."""
    n = cpu_threads()
    if device == "cpu" and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()



def fall_back_to_cpu(err: BaseException) -> NoReturn:
    """After a GPU out-of-memory error: free the cache, switch this session to the CPU, rerun."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if st.session_state.get("force_cpu"):
        raise err  # already on the CPU: nothing left to fall back to
    st.session_state["force_cpu"] = True
    st.session_state["device_notice"] = (
        "The GPU ran out of memory, so this session now computes on the CPU (slower). "
        "Choose a smaller model or image batch, then switch back to the GPU in the sidebar."
    )
    st.rerun()


def guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`; on a GPU out-of-memory error fall back to the CPU with a clear message."""
    try:
        return fn(*args, **kwargs)
    except torch.OutOfMemoryError as err:  # torch.cuda.OutOfMemoryError is the same class
        fall_back_to_cpu(err)

