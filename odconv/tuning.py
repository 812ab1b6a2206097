"""Measured dispatch: time every formulation that can compute an ODConv call on the device at hand, keep the
fastest, and remember it, as cuDNN's benchmark mode does for convolutions.

A call's key is its layer shape, batch, which attentions it has, padding, dilation, compute dtype, memory
format and whether autograd records it (forward + backward timed then, forward only otherwise). The first call
of each key (in eager mode: never inside torch.compile/export tracing) times every candidate: one warm-up, then
the median of `REPEATS` runs on copies of the call's own tensors. Choices live in memory (per device type) and
in a JSON file per device name and torch version under the cache directory ($ODCONV_CACHE or ~/.cache/odconv,
subfolder `dispatch`), written atomically and read back by later runs. Choices are not module state:
checkpoints are unchanged. Under DDP, `share_choices` gives every rank rank 0's table and then freezes it (keys
not in it use the rules on every rank), so all ranks run the same computations.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .formulations import LayerShape, get

log = logging.getLogger(__name__)

REPEATS = 3  # timed runs per candidate, after one warm-up; the median is kept


class Choice(NamedTuple):
    formulation: str
    times: dict[str, float]  # milliseconds per candidate (inf: it failed, e.g. out of memory)


_tables: dict[str, dict[str, Choice]] = {}  # device type -> key -> choice: what this process uses
_files: dict[str, Path] = {}  # device type -> the JSON file its table was read from and is written to
_frozen = False  # after share_choices under DDP: no new measurements, misses use the rules
_measuring = 0  # depth of `tune` calls: measure misses whatever the dispatch mode
_spent = {"keys": 0, "seconds": 0.0, "logged": False}


def wall_clock(name: str, run: Callable[[], None], limit: float = float("inf")) -> float:
    """Seconds one `run()` takes: one warm-up (allocations, oneDNN primitives, cuDNN's own search), then the
    median of `REPEATS` runs, synchronising the GPU around each. A candidate whose warm-up already takes more
    than `limit` is not run again (some take seconds where the best takes milliseconds)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    times = []
    for i in range(REPEATS + 1):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
        if i == 0 and times[0] > limit:
            return times[0]
    return statistics.median(times[1:])


# timer(formulation name, run, limit) -> seconds. A module attribute so tests can give it a fake clock.
timer: Callable[[str, Callable[[], None], float], float] = wall_clock
CUTOFF = 10.0  # a candidate slower than CUTOFF x the best so far in its warm-up is not timed further


def call_key(shape: LayerShape, x: Tensor, padding, dilation, backward: bool) -> str:
    """The key of one call (plain Python on sizes and flags: it traces without a graph break)."""
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    layout = "nhwc" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else "nchw"
    atts = "".join(n for n, on in zip("csfk", (shape.has_channel, shape.has_spatial, shape.has_filter,
                                                shape.kernel_num > 1)) if on)
    def sizes(t) -> str:  # "3x3", or "3x3x3" for a 3-D call
        return "x".join(str(n) for n in t)
    maps = (shape.height, shape.width) if shape.depth is None else (shape.depth, shape.height, shape.width)
    return (f"b{shape.batch} c{shape.in_channels} o{shape.out_channels} {sizes(maps)} k{sizes(shape.kernel_size)} "
            f"s{sizes(shape.stride)} p{sizes(padding)} d{sizes(dilation)} "
            f"g{shape.groups} K{shape.kernel_num} att={atts} {str(dtype).removeprefix('torch.')} {layout} "
            f"{'train' if backward else 'eval'}")


def cache_dir() -> Path:
    return Path(os.environ.get("ODCONV_CACHE") or Path.home() / ".cache" / "odconv") / "dispatch"


def device_name(device: torch.device) -> str:
    """What the timings depend on: the GPU model, or the CPU model and the intra-op thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{device.type} {model} {torch.get_num_threads()} threads"


def cache_file(device: torch.device) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device_name(device)).strip("-")
    return cache_dir() / f"{slug}-torch{torch.__version__}.json"


def _read(path: Path) -> dict[str, Choice]:
    try:
        data = json.loads(path.read_text())
        return {k: Choice(v["formulation"], v["times_ms"]) for k, v in data["choices"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("odconv: ignoring unreadable dispatch cache %s (%s)", path, e)
        return {}


def _file(device: torch.device) -> Path:
    if device.type not in _files:
        _files[device.type] = cache_file(device)
    return _files[device.type]


def _write(device: torch.device, key: str, choice: Choice) -> None:
    """Add one choice to the device's file: re-read (another process may have added keys), then write a
    temporary file and rename it over the old one, so a reader never sees half a file."""
    path = _file(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _read(path)
        table[key] = choice
        data = {"device": device_name(device), "torch": torch.__version__,
                "choices": {k: {"formulation": c.formulation, "times_ms": c.times} for k, c in sorted(table.items())}}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            json.dump(data, f, indent=1)
        os.replace(f.name, path)
    except OSError as e:  # a read-only home must not stop training: the choice stays in memory
        log.warning("odconv: could not write the dispatch cache %s (%s)", path, e)


def _table(device: torch.device) -> Optional[dict[str, Choice]]:
    table = _tables.get(device.type)
    if table is None and not torch.compiler.is_compiling():  # first use in this process: read the file
        table = _tables[device.type] = _read(_file(device))
    return table


def lookup(device: torch.device, key: str) -> Optional[Choice]:
    table = _table(device)
    return None if table is None else table.get(key)


def may_measure() -> bool:
    """Only in eager mode (never while torch.compile, torch.export, jit or FX trace) and not after
    `share_choices` froze the table, unless inside `tune`."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
    return not tracing and (not _frozen or _measuring > 0)


def measuring() -> bool:
    """Inside `tune`: misses are measured whatever the dispatch mode."""
    return _measuring > 0


def _leaf(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _runner(name: str, args: tuple, backward: bool) -> Callable[[], None]:
    """One call of formulation `name` on fresh leaves sharing the call's storage (no effect on the real graph)."""
    fn = get(name).fn
    tensors, conf = args[:6], args[6:]

    def run() -> None:
        leaves = [_leaf(t) for t in tensors]
        with torch.set_grad_enabled(backward):
            out = fn(*leaves, *conf)
            if backward:
                out.backward(torch.ones_like(out))
    return run


def measure(device: torch.device, key: str, names: list[str], args: tuple, backward: bool) -> Choice:
    """Time every formulation in `names` (the likely best first: it sets the cut-off for the others) on this
    call, remember and save the fastest."""
    _table(device)
    if not _spent["keys"]:
        log.info("odconv: measuring ODConv formulations for new layer calls on %s (cache %s)",
                 device_name(device), _file(device))
        if not _measuring:
            atexit.register(_log_total)
    start = time.perf_counter()
    times = {}
    for name in names:
        best = min(times.values(), default=float("inf"))
        try:
            times[name] = 1e3 * timer(name, _runner(name, args, backward), CUTOFF * best / 1e3)
        except (RuntimeError, ValueError) as e:  # out of memory at this size, or a shape it rejects
            log.debug("odconv: %s failed on %s: %s", name, key, e)
            times[name] = float("inf")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    choice = Choice(min(times, key=times.get), times)
    _tables[device.type][key] = choice
    _write(device, key, choice)
    _spent["keys"] += 1
    _spent["seconds"] += time.perf_counter() - start
    return choice


def _log_total() -> None:
    if _spent["keys"] and not _spent["logged"]:
        log.info("odconv: measured dispatch tuned %d layer calls in %.1f s", _spent["keys"], _spent["seconds"])
        _spent["logged"] = True


@contextlib.contextmanager
def preserved_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run `model` without a trace: its buffers (BatchNorm statistics), train/eval mode and the RNG streams are
    restored afterwards, so tuning or explaining does not change what training then does."""
    buffers = [b.detach().clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def tune(model: nn.Module, example: Tensor, training: bool = True) -> dict[str, Choice]:
    """Measure, now and in eager mode, every ODConv call `model(example)` makes (forward + backward when
    `training`), whatever the dispatch mode; returns the newly measured choices by key. Call it on the plain
    module (not DDP or torch.compile's wrapper) with a real batch, under the autocast and memory format that
    training uses. Model state and RNG are left as they were."""
    before = {d: set(t) for d, t in _tables.items()}
    global _measuring
    start = time.perf_counter()
    _measuring += 1
    try:
        with preserved_state(model, example.device), torch.set_grad_enabled(training):
            model.train(training)
            model(example)
    finally:
        _measuring -= 1
    new = {k: c for d, t in _tables.items() for k, c in t.items() if k not in before.get(d, ())}
    where = _files.get(example.device.type)
    log.info("odconv: tuned %d new ODConv layer calls in %.1f s (cache %s)", len(new), time.perf_counter() - start,
             where)
    _spent["logged"] = True
    return new


def choices() -> dict[str, dict[str, Choice]]:
    """A copy of the tables this process uses (device type -> key -> choice)."""
    return {d: dict(t) for d, t in _tables.items()}


def share_choices(src: int = 0) -> int:
    """Under torch.distributed: every rank takes rank `src`'s tables (one broadcast_object_list) and stops
    measuring, so all ranks run identical computations; keys missing from the table use the rules everywhere.
    Call it on every rank after `src` ran `tune`. Returns the number of shared choices; without a process
    group (or with one process) nothing changes."""
    global _frozen
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sum(len(t) for t in _tables.values())
    box = [choices() if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    _tables.clear()
    _tables.update(box[0])
    _frozen = True
    return sum(len(t) for t in _tables.values())


def clear() -> None:
    """Forget the in-memory tables and unfreeze (the files stay); the next lookup reads the file again."""
    global _frozen
    _tables.clear()
    _files.clear()
    _frozen = False
