"""The dispatch: the rules on named shapes, the modes, the measured choice (fake clocks), its JSON cache, torch.compile
and torch.export with it, explain's report, and two DDP processes ending with rank 0's choices."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import odconv
from odconv import ODConv2d, tuning
from odconv.dispatch import LayerShape as L
from odconv.dispatch import choose, decide
from odconv.formulations import REGISTRY
from odconv_reference import rel_err

# name: (shape, device type, what the rules pick). The rules' reasons are in odconv/dispatch.py's docstring.
# These expected picks are the rules' own output, pinned: they were derived from the layer timings in BENCHMARKS.md
# ("ODConv operator and models"), not independently of the code, so this table guards against an unintended change
# of the rules, not their correctness. Their correctness as a speed claim is checked by scripts/bench_odconv.py.
RULES = {
    "resnet50 1x1 at 56x56: one batched GEMM": (L(16, 64, 256, 56, 56, (1, 1), (1, 1), 1, 1, False), "cpu", "bmm"),
    "resnet50 1x1 K4 at 28x28, wide": (L(16, 512, 128, 28, 28, (1, 1), (1, 1), 1, 4, False), "cpu", "folded"),
    "mbv2 1x1 K4 at 28x28, narrow": (L(16, 32, 96, 28, 28, (1, 1), (1, 1), 1, 4, False), "cpu", "bmm"),
    "resnet50 1x1 K1 at 14x14": (L(16, 1024, 256, 14, 14, (1, 1), (1, 1), 1, 1, False), "cpu", "feature"),
    "resnet50 1x1 K4 at 7x7: kernel dwarfs maps": (L(16, 2048, 512, 7, 7, (1, 1), (1, 1), 1, 4, False), "cpu",
                                                   "feature"),
    "mbv2 1x1 K4 at 14x14": (L(16, 64, 64, 14, 14, (1, 1), (1, 1), 1, 4, False), "cpu", "grouped"),
    "depthwise": (L(16, 96, 96, 56, 56, (3, 3), (1, 1), 96, 4, True), "cpu", "folded"),
    "grouped conv": (L(16, 64, 64, 28, 28, (3, 3), (1, 1), 4, 4, True), "cpu", "grouped"),
    "batch 1": (L(1, 256, 256, 14, 14, (3, 3), (1, 1), 1, 4, True), "cpu", "grouped"),
    "3x3 K1 at 14x14": (L(16, 256, 256, 14, 14, (3, 3), (1, 1), 1, 1, True), "cpu", "taps"),
    "3x3 K4 at 7x7, 512 wide": (L(16, 512, 512, 7, 7, (3, 3), (1, 1), 1, 4, True), "cpu", "columns"),
    "3x3 K4 without spatial attention at 1x1 (DyConv, CondConv): centre tap only": (
        L(64, 512, 512, 1, 1, (3, 3), (1, 1), 1, 4, False), "cpu", "taps"),
    "3x3 K4 at 1x1: centre tap only": (L(64, 512, 512, 1, 1, (3, 3), (1, 1), 1, 4, True), "cpu", "taps"),
    "3x3 K8 without spatial attention at 2x2 (CondConv)": (L(64, 256, 256, 2, 2, (3, 3), (1, 1), 1, 8, False), "cpu",
                                                           "columns"),
    "3x3 K4 stride 2 from 2x2 to 1x1": (L(64, 256, 512, 2, 2, (3, 3), (2, 2), 1, 4, True), "cpu", "columns"),
    "3x3 K4 without spatial attention at 8x8": (L(64, 64, 64, 8, 8, (3, 3), (1, 1), 1, 4, False), "cpu", "grouped"),
    "3x3 K4 at 56x56": (L(16, 64, 64, 56, 56, (3, 3), (1, 1), 1, 4, True), "cpu", "folded"),
    "3x3 K4 at 14x14": (L(16, 256, 256, 14, 14, (3, 3), (1, 1), 1, 4, True), "cpu", "grouped"),
    "3x3 K1 stride 2": (L(16, 128, 128, 28, 28, (3, 3), (2, 2), 1, 1, True), "cpu", "grouped"),
    "cuda 3x3 K1 at 14x14": (L(16, 256, 256, 14, 14, (3, 3), (1, 1), 1, 1, True), "cuda", "taps"),
    "cuda 3x3 K4 at 7x7": (L(16, 512, 512, 7, 7, (3, 3), (1, 1), 1, 4, True), "cuda", "columns"),
    "cuda 1x1 at 56x56": (L(16, 64, 256, 56, 56, (1, 1), (1, 1), 1, 1, False), "cuda", "bmm"),
    "cuda depthwise": (L(16, 96, 96, 56, 56, (3, 3), (1, 1), 96, 4, True), "cuda", "folded"),
}


@pytest.mark.parametrize("name", list(RULES))
def test_rules_on_named_shapes(name):
    shape, device_type, expected = RULES[name]
    assert choose(shape, device_type) == expected
    assert REGISTRY[expected].can_compute(shape)


def test_batch_one_inference_folds_the_kernel_where_it_is_no_larger_than_the_maps():
    small_kernel = L(1, 64, 64, 56, 56, (3, 3), (1, 1), 1, 4, True)  # 36,864 kernel elements, 401,408 map elements
    large_kernel = L(1, 256, 256, 14, 14, (3, 3), (1, 1), 1, 4, True)  # 589,824 against 100,352
    depthwise = L(1, 96, 96, 56, 56, (3, 3), (1, 1), 96, 4, True)
    for device_type in ("cpu", "cuda"):
        assert choose(small_kernel, device_type, training=False) == "single"
        assert choose(depthwise, device_type, training=False) == "single"
        assert choose(large_kernel, device_type, training=False) != "single"
        assert choose(small_kernel, device_type, training=True) != "single"  # training keeps a formulation


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """Measured mode with an empty cache under tmp_path and a fake clock: `fresh.times[name]` seconds per
    formulation (default 1 s), every timing recorded in `fresh.calls`."""
    monkeypatch.setenv("ODCONV_CACHE", str(tmp_path))
    tuning.clear()
    previous = odconv.set_dispatch("measured")

    class Clock:
        times: dict[str, float] = {}
        calls: list[str] = []

        def __call__(self, name, run, limit):
            run()  # the candidate must really run on this call's tensors
            self.calls.append(name)
            return self.times.get(name, 1.0)
    clock = Clock()
    monkeypatch.setattr(tuning, "timer", clock)
    yield clock
    odconv.set_dispatch(previous)
    tuning.clear()


def _layer_and_input():
    torch.manual_seed(0)
    return ODConv2d(8, 8, 3, padding=1, kernel_num=2), torch.randn(2, 8, 6, 6)


def test_set_dispatch_returns_the_previous_mode_and_rejects_unknown_ones():
    previous = odconv.set_dispatch("rules")
    try:
        assert odconv.set_dispatch("measured") == "rules"
        assert odconv.get_dispatch() == "measured"
        with pytest.raises(ValueError, match="Unknown ODConv dispatch mode 'fast'"):
            odconv.set_dispatch("fast")
    finally:
        odconv.set_dispatch(previous)
    assert previous == "auto"  # the default


def test_auto_mode_uses_the_rules_on_cpu(fresh):
    odconv.set_dispatch("auto")
    layer, x = _layer_and_input()
    rows = odconv.explain(layer, x)
    assert [r.reason for r in rows] == ["rule"] and fresh.calls == []


def test_measured_mode_picks_the_fastest_and_explain_shows_why(fresh):
    layer, x = _layer_and_input()
    shape = layer.layer_shape(x)
    rule = choose(shape)
    fastest = next(f for f in ("taps", "columns") if f != rule)  # not what the rules would pick
    fresh.times = {fastest: 0.001, "grouped": 0.003}
    rows = odconv.explain(layer, x)
    assert (rows[0].formulation, rows[0].reason) == (fastest, "measured")
    assert set(fresh.calls) == set(REGISTRY) - {"feature", "single"}  # every one that computes this 3x3 layer (batch > 1)
    assert rows[0].times[fastest] == pytest.approx(1.0) and rows[0].times["grouped"] == pytest.approx(3.0)
    table = odconv.format_explain(rows)
    assert f"{fastest:11s} measured {fastest}=1 grouped=3" in table
    # A second call of the same key is not timed again; the output is the fastest formulation's.
    fresh.calls.clear()
    layer.train()
    y = layer(x)
    assert fresh.calls == []
    layer.formulation = fastest
    assert rel_err(y, layer(x)) == 0.0


def test_training_and_inference_are_separate_keys(fresh):
    layer, x = _layer_and_input()
    fresh.times = {"columns": 0.001}
    layer.train()
    layer(x).sum().backward()
    n_train = len(fresh.calls)
    fresh.times = {"grouped": 0.001}
    with torch.no_grad():
        layer.eval()(x)
    assert len(fresh.calls) == 2 * n_train
    keys = tuning.choices()["cpu"]
    assert {k.rsplit(" ", 1)[1]: c.formulation for k, c in keys.items()} == {"train": "columns", "eval": "grouped"}


def test_json_cache_is_written_and_reused_without_timing(fresh, tmp_path):
    layer, x = _layer_and_input()
    fresh.times = {"columns": 0.001}
    layer(x)
    files = list((tmp_path / "dispatch").iterdir())
    assert len(files) == 1 and files[0].name.endswith(f"-torch{torch.__version__}.json")  # no temporary left
    data = json.loads(files[0].read_text())
    assert data["torch"] == torch.__version__ and data["device"] == tuning.device_name(x.device)
    (key, entry), = data["choices"].items()
    assert entry["formulation"] == "columns" and "k3x3" in key and key.endswith("float32 nchw train")
    tuning.clear()  # a fresh process's state: nothing in memory
    fresh.calls.clear()
    rows = odconv.explain(layer, x)
    assert fresh.calls == [] and (rows[0].formulation, rows[0].reason) == ("columns", "measured")


def test_cache_key_separates_dtype_and_memory_format(fresh):
    layer, x = _layer_and_input()
    layer(x)
    layer(x.contiguous(memory_format=torch.channels_last))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    keys = sorted(tuning.choices()["cpu"])
    assert len(keys) == 3
    assert {" ".join(k.split(" ")[-3:-1]) for k in keys} == {"float32 nchw", "float32 nhwc", "bfloat16 nchw"}


def test_a_forced_formulation_is_not_timed(fresh):
    layer, x = _layer_and_input()
    with odconv.use_formulation("bmm"):
        rows = odconv.explain(layer, x)
    assert (rows[0].formulation, rows[0].reason, rows[0].times) == ("bmm", "forced", None)
    assert fresh.calls == []


def test_tune_measures_now_and_leaves_the_model_unchanged(fresh):
    torch.manual_seed(0)
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1, kernel_num=2), nn.Dropout(0.5), ODConv2d(8, 4, 1)).eval()
    x = torch.randn(2, 8, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    odconv.set_dispatch("rules")  # tune measures whatever the mode
    new = tuning.tune(model, x, training=True)
    assert len(new) == 2 and all(k.endswith("train") for k in new)
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
    assert tuning.tune(model, x, training=True) == {}  # nothing new the second time


@pytest.mark.slow
def test_compile_never_tunes_inside_the_trace_and_uses_tuned_choices(fresh, monkeypatch):
    torch._dynamo.reset()
    layer, x = _layer_and_input()
    fresh.times = {"columns": 0.001}
    traced = []
    entry = REGISTRY["columns"]

    def spy(*args):
        traced.append("columns")
        return entry.fn(*args)
    monkeypatch.setitem(REGISTRY, "columns", entry._replace(fn=spy))
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert fresh.calls == [] and traced == []  # an untuned key under tracing: the rules (not columns here)
    assert rel_err(y, layer(x)) < 1e-6  # eager: this call tunes
    assert fresh.calls and traced  # eager ran the measured choice, columns
    torch._dynamo.reset()
    fresh.calls.clear()
    traced.clear()
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    assert fresh.calls == [] and traced  # the trace took the cached choice


@pytest.mark.slow
def test_export_of_od_resnet18_takes_the_inference_choices_without_tuning(fresh):
    import models  # noqa: F401
    import timm

    fresh.times = {"columns": 0.001, "taps": 0.002}
    model = timm.create_model("od_resnet18", kernel_num=4, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)  # eager inference: measures its keys
    rows = odconv.explain(model, x)
    assert {r.reason for r in rows} == {"measured"} and all(k.endswith(" eval") for k in tuning.choices()["cpu"])
    calls = len(fresh.calls)
    program = torch.export.export(model, (x,))
    assert len(fresh.calls) == calls  # nothing timed while exporting
    # Export traces with autograd on, but takes the inference keys' choices. Eager inference also folds the attention
    # BatchNorm into cached weights (odconv/attention.py), which the traced program computes unfolded: equal within
    # float32 rounding, not bit for bit.
    assert rel_err(program.module()(x), expected) < 1e-5


def test_decide_explains_rule_choice_when_measuring_is_not_allowed(fresh, monkeypatch):
    layer, x = _layer_and_input()
    monkeypatch.setattr(tuning, "_frozen", True)  # as on every rank after share_choices
    att = layer.attention(x)
    d = decide(None, x, layer.weight, att.channel, att.filter, att.spatial, att.kernel, layer.stride, layer.padding,
               layer.dilation, layer.groups)
    assert d.reason == "rule" and d.formulation == choose(layer.layer_shape(x)) and fresh.calls == []


def _ddp_worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    """One rank: both ranks tune with their own (different) fake clocks, rank 0's choices are shared, then a DDP
    step runs; writes its table and gradients for the parent to compare."""
    import torch.distributed as dist

    os.environ["ODCONV_CACHE"] = os.path.join(out_dir, f"cache{rank}")  # each rank its own file
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        odconv.set_dispatch("measured")
        favourite = "columns" if rank == 0 else "grouped"
        tuning.timer = lambda name, run, limit: 0.001 if name == favourite else 1.0
        torch.manual_seed(0)
        model = nn.Sequential(ODConv2d(8, 8, 3, padding=1, kernel_num=2), nn.ReLU(), ODConv2d(8, 4, 3, padding=1))
        x = torch.randn(4, 8, 6, 6)
        tuning.tune(model, x[2 * rank: 2 * rank + 2])
        mine = {k: c.formulation for k, c in tuning.choices()["cpu"].items()}
        tuning.share_choices()
        shared = {k: c.formulation for k, c in tuning.choices()["cpu"].items()}
        # Eval mode: the attention BN uses running statistics, so each sample's gradient is independent of the
        # others' and two halves average to the whole batch's (autograd records: the keys are still "train").
        ddp = nn.parallel.DistributedDataParallel(model.eval())
        ddp(x[2 * rank: 2 * rank + 2]).square().mean().backward()
        rows = [r.formulation for r in odconv.explain(model.train(), x[2 * rank: 2 * rank + 2])]
        torch.save(dict(mine=mine, shared=shared, used=rows, grads=[p.grad for p in model.parameters()]),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_trainer_config_names_the_allowed_dispatch_modes():
    from conftest import compose_cfg
    from train.config import ConfigError, validate

    assert validate(compose_cfg([])).trainer.odconv_dispatch == "auto"
    with pytest.raises(ConfigError, match=r"trainer.odconv_dispatch must be one of \['auto', 'measured', 'rules'\]"):
        validate(compose_cfg(["trainer.odconv_dispatch=fast"]))


@pytest.mark.slow
def test_training_with_measured_dispatch_tunes_and_caches(cache_dir, tmp_path, monkeypatch):
    from conftest import TINY, compose_cfg
    from train.loop import run

    monkeypatch.setenv("ODCONV_CACHE", str(tmp_path / "odconv-cache"))
    # What this checks is the wiring (tuned before training, cached); a fake clock that favours `bmm` keeps the
    # loaded test machine's seconds-long timings of grouped convs out of it.
    monkeypatch.setattr(tuning, "timer", lambda name, run, limit: 0.001 if name == "bmm" else 1.0)
    tuning.clear()
    summary = run(compose_cfg(TINY + [
        "model=resnet18_od", "trainer.odconv_dispatch=measured", "trainer.epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path / 'run'}"]))
    assert summary["status"] == "completed" and summary["step"] == 2
    assert odconv.get_dispatch() == "auto"  # the run restores the mode it found
    (path,) = (tmp_path / "odconv-cache" / "dispatch").iterdir()
    keys = json.loads(path.read_text())["choices"]
    # od_resnet18's 16 ODConv layers at 16px, batch 16 per step, make 7 distinct calls (4 of them 2x2 or 1x1 maps).
    train = {k: c["formulation"] for k, c in keys.items() if k.startswith("b16 ") and k.endswith("float32 nchw train")}
    assert len(train) == 7 and set(train.values()) == {"bmm"}, keys
    tuning.clear()


@pytest.mark.slow
def test_ddp_ranks_use_rank0_choices_and_gradients_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(r0["mine"].values()) == {"columns"} and set(r1["mine"].values()) == {"grouped"}  # the clocks differ
    assert r1["shared"] == r0["shared"] == r0["mine"]
    assert r0["used"] == r1["used"] == ["columns", "columns"]
    torch.manual_seed(0)
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1, kernel_num=2), nn.ReLU(), ODConv2d(8, 4, 3, padding=1))
    x = torch.randn(4, 8, 6, 6)
    model.eval()(x).square().mean().backward()  # one process, the whole batch: DDP averages the halves' gradients
    for p, g0, g1 in zip(model.parameters(), r0["grads"], r1["grads"]):
        assert rel_err(g0, p.grad) < 1e-5 and rel_err(g1, p.grad) < 1e-5


def test_wall_clock_runs_warm_up_and_repeats_and_stops_a_hopeless_candidate_early():
    runs = []
    tuning.wall_clock("grouped", lambda: runs.append(1))
    assert len(runs) == 1 + tuning.REPEATS
    runs.clear()
    tuning.wall_clock("grouped", lambda: runs.append(1), limit=0.0)  # its warm-up already exceeds the limit
    assert len(runs) == 1
