"""Precision: bf16 or fp16 chosen by what the hardware runs natively, fp32 master weights, fp16 loss scaling."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

from minbert import BertModel, load_tokenizer
from minbert.plumbing import machine as precision
from minbert.plumbing.machine import autocast, choose_precision, precision_choice, resolve_precision, tf32_applies
from multitask.model import MultitaskBert
from multitask.regularizers import Regularizers, RegularizerSettings, new_weight_average
from multitask.settings import parse
from multitask.tasks import SST, TASKS
from multitask.train import Trainer, TrainSettings
from multitask_classifier import banner
from tests.conftest import read_column
from tests.test_smart_training import TINY, tiny_tasks

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("flags,expected", [
    ({"fpu", "avx2", "avx512f"}, "fp32"),
    ({"fpu", "avx512f", "avx512_bf16"}, "bf16"),
    ({"fpu", "amx_bf16", "amx_tile"}, "bf16"),
    (set(), "fp32"),
])
def test_auto_takes_bf16_only_on_cpus_that_run_it_natively(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", CPU) == expected
    # An explicit choice is honoured whatever the CPU.
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


GPUS = {"P100": (6, 0), "V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "RTX 4090": (8, 9), "H100": (9, 0)}


@pytest.mark.parametrize("gpu,expected", [("P100", "fp32"), ("V100", "fp16"), ("T4", "fp16"), ("A100", "bf16"),
                                          ("RTX 4090", "bf16"), ("H100", "bf16")])
def test_auto_on_a_gpu_takes_what_its_tensor_cores_run(gpu, expected):
    chosen, why = choose_precision("auto", "cuda", GPUS[gpu])
    assert chosen == expected
    major, minor = GPUS[gpu]
    assert why.startswith("auto: ") and f"compute capability {major}.{minor}" in why and "\n" not in why
    assert ("gradient scaling" in why) == (expected == "fp16")
    assert ("TF32" in why) == (GPUS[gpu] >= (8, 0)) == tf32_applies("cuda", GPUS[gpu])


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native(native, expected):
    chosen, why = choose_precision("auto", "cpu", None, cpu_native_bf16=native)
    assert chosen == expected and "AVX512-BF16" in why and "TF32" not in why
    assert not tf32_applies("cpu", None)


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("device_type,capability,native", [("cuda", (7, 5), False), ("cuda", (9, 0), False),
                                                           ("cpu", None, True), ("cpu", None, False)])
def test_an_explicit_precision_is_honoured_on_every_device(requested, device_type, capability, native):
    chosen, why = choose_precision(requested, device_type, capability, native)
    assert chosen == requested and why.startswith(f"--precision {requested} as requested")
    # Said when the hardware has no units for it (bf16 on a T4, fp16 on a CPU).
    slow = {"bf16": device_type == "cpu" and not native or capability == (7, 5),
            "fp16": device_type == "cpu", "fp32": False}[requested]
    assert ("may be slower than fp32" in why) == slow


def test_auto_on_a_real_device_reads_its_capability_not_is_bf16_supported(monkeypatch):
    # torch.cuda.is_bf16_supported() counts emulation as support: True on a T4, where bf16 is slow.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision_choice("auto", CUDA)[0] == resolve_precision("auto", CUDA) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("auto", CUDA) == "bf16"


@pytest.fixture
def tf32_flags_restored():
    """torch's TF32 switches put back after the test (monkeypatch cannot restore these properties)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("capability,expected", [((8, 0), True), ((7, 5), False), (None, False)])
def test_tf32_is_switched_on_only_on_ampere_and_later(monkeypatch, tf32_flags_restored, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.allow_tf32(CPU if capability is None else CUDA) == expected
    assert torch.backends.cuda.matmul.allow_tf32 == torch.backends.cudnn.allow_tf32 == expected


def test_the_banner_says_which_precision_runs_and_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    settings = parse(["--precision", "auto"])
    train = dataclasses.replace(settings.train, lr=1e-3, precision="fp16")
    lines = banner(settings, train, types.SimpleNamespace(steps_per_epoch=9, total_updates=36, matmul_peak=5e12), CUDA)
    [line] = [line for line in lines if line.startswith("precision: ")]
    assert line.startswith("precision: fp16 on cuda (auto: fp16 autocast with gradient scaling, as compute "
                           "capability 7.5 has fp16 tensor cores")


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\nbugs\t: none\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "sse", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_native_bf16_label_tells_apart_cpus_that_train_auto_in_bf16_and_in_fp32():
    assert precision.native_bf16_label(frozenset({"avx2", "amx_bf16", "avx512_bf16"})) == "AVX512-BF16, AMX"
    assert precision.native_bf16_label(frozenset({"avx2", "avx512_bf16"})) == "AVX512-BF16"
    assert precision.native_bf16_label(frozenset({"avx2", "avx512f"})) == "no native bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision 'fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU)


def test_bf16_training_keeps_fp32_weights_optimiser_state_and_teacher(tmp_path):
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    teacher = new_weight_average(model, None)
    regularizers = Regularizers(RegularizerSettings(smart=True, rdrop=True), teacher)
    tasks = tiny_tasks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, tasks, tasks, TrainSettings(epochs=1, batch_size=8, lr=1e-3, seed=0, precision="bf16"),
                      CPU, tmp_path, regularizers=regularizers, average=regularizers.average)
    history = trainer.train()
    assert all(torch.isfinite(torch.tensor(list(r.train_losses.values()))).all() for r in history)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing trained"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    assert states and {t.dtype for t in states} == {torch.float32}
    assert {t.dtype for t in regularizers.average.model.state_dict().values() if t.is_floating_point()} == \
        {torch.float32}
    # Every reported loss term is an fp32 value.
    terms = trainer.loss_terms(SST, tasks["sst"].batch([0, 1, 2]))
    assert {v.dtype for v in terms.values()} == {torch.float32}


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "packed"])
def test_bf16_encoder_is_within_bf16_tolerance_of_fp32(unpad, data_dir):
    model = BertModel.from_pretrained(None, unpad_inputs=unpad).eval()
    tokenizer = load_tokenizer()
    pairs = read_column(data_dir / "quora-dev.csv", "sentence1", "sentence2", limit=16)
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs])
    assert batch["attention_mask"].float().mean() < 0.9 and batch["token_type_ids"].sum() > 0
    with torch.no_grad():
        fp32 = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["last_hidden_state"]
        with autocast(CPU, "bf16"):
            bf16 = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["last_hidden_state"]
    real = batch["attention_mask"].bool()
    a, b = fp32[real], bf16[real].float()
    # bf16 keeps 8 significant bits: relative error per op ~4e-3, a few percent after six layers.
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cosine.min() > 0.995
    assert not torch.equal(a, b), "autocast did not run in bf16"


def test_linear_reuses_its_bf16_weights_only_while_they_are_unchanged():
    from minbert.model import Linear
    torch.manual_seed(0)
    layer, x = Linear(8, 4), torch.randn(3, 8)
    with torch.no_grad(), autocast(CPU, "bf16"):
        first = layer(x)
        cached = layer._cast[1]
        assert torch.equal(first, torch.nn.functional.linear(x, layer.weight, layer.bias))  # autocast's own result
        assert layer(x) is not None and layer._cast[1] is cached  # reused, not cast again
    with torch.no_grad():
        layer.weight.add_(1.0)  # an optimiser step: in place, the version moves
        with autocast(CPU, "bf16"):
            after = layer(x)
    assert layer._cast[1] is not cached
    assert torch.equal(after, torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()))
    # With autograd on (training) the ordinary autocast path runs and gradients reach the weights.
    with autocast(CPU, "bf16"):
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    # fp32: the plain layer.
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_under_autocast_the_residual_stream_is_bf16_and_the_outputs_fp32():
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    batch = tiny_tasks()["sst"].batch([0, 1, 2])
    seen = []
    model.encoder.encoder.layer[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.no_grad(), autocast(CPU, "bf16"):
        output = model(TASKS["sst"], batch)
    assert seen == [torch.bfloat16] and output.dtype == torch.float32


# ------------------------------------------------------------------------------------ fp16 loss scaling

class InfiniteGradient(torch.autograd.Function):
    """A term of value 0 whose gradient is +inf: the overflow of an fp16 backward, on purpose."""

    @staticmethod
    def forward(ctx, output: torch.Tensor) -> torch.Tensor:
        ctx.shape = output.shape
        return output.new_zeros(()).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full(ctx.shape, float("inf"))


class OverflowOnce(Regularizers):
    """R-Drop's place in the step taken by a term whose gradient is infinite on call `bad_call` (from 0)."""

    def __init__(self, bad_call: int) -> None:
        super().__init__(RegularizerSettings(rdrop=True))
        self.bad_call, self.calls = bad_call, 0

    def rdrop(self, model, task, batch, output):
        self.calls += 1
        return {"rdrop": InfiniteGradient.apply(output) if self.calls - 1 == self.bad_call else output.new_zeros(())}


def fp16_trainer(tmp_path, regularizers: Regularizers | None = None, precision_name: str = "fp16") -> Trainer:
    torch.manual_seed(0)
    tasks = tiny_tasks()
    return Trainer(MultitaskBert(BertModel(TINY)), tasks, tasks,
                   TrainSettings(epochs=1, batch_size=8, lr=1e-3, seed=0, precision=precision_name), CPU, tmp_path,
                   regularizers=regularizers)


def test_fp16_skips_an_update_whose_gradients_overflow_counts_it_and_trains_on(tmp_path, caplog):
    bad = 4
    trainer = fp16_trainer(tmp_path, OverflowOnce(bad))
    changed, scales = [], []
    update = trainer.update

    def watched_update() -> None:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        scale = trainer.scaler.get_scale()
        update()
        changed.append(any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters())))
        scales.append((scale, trainer.scaler.get_scale()))

    trainer.update = watched_update
    with caplog.at_level("INFO", logger="multitask.train"):
        [record] = trainer.train()
    # The poisoned update left every weight as it was, and the scaler halved its scale for it.
    assert not changed[bad] and scales[bad][1] == scales[bad][0] / 2
    # Every update the scaler skipped (this one, and any while its scale settles) is counted, the
    # others applied; the run goes on to the end of its plan.
    skipped = changed.count(False)
    assert skipped >= 1 and trainer.scaler_skips == skipped == record.extra["scaler_skipped_steps"]
    assert trainer.updates == trainer.steps_per_epoch == len(changed) and any(changed[bad + 1:])
    assert record.skipped_steps == 0  # the losses themselves were finite
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert sum("fp16: update" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records) == skipped
    [line] = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["scaler_skipped_steps"] == skipped


def test_fp16_clips_the_true_gradients_and_applies_them_as_clipped(tmp_path, monkeypatch):
    trainer = fp16_trainer(tmp_path)
    updates: list[dict] = []  # per update: the norm clipping left, and the squared norm the optimiser applied
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        norm = clip(params, max_norm, *args, **kwargs)
        updates.append({"clipped": min(float(norm), max_norm), "applied": 0.0, "ran": False})
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    update_group = trainer.optimizer._update_group

    def recording_update_group(group):
        updates[-1]["ran"] = True
        updates[-1]["applied"] += sum(float(p.grad.square().sum()) for p in group["params"] if p.grad is not None)
        return update_group(group)

    monkeypatch.setattr(trainer.optimizer, "_update_group", recording_update_group)
    trainer.train()
    applied = [u for u in updates if u["ran"]]
    assert len(updates) == trainer.updates and len(applied) == trainer.updates - trainer.scaler_skips > 0
    # Clipping saw the unscaled gradients, so the optimiser applies exactly what it left; clipping
    # the scaled ones would leave the applied gradients 1/scale as large.
    assert [u["applied"] ** 0.5 for u in applied] == pytest.approx([u["clipped"] for u in applied], rel=1e-3)


def test_fp32_and_bf16_runs_have_no_scaler_and_no_scaler_metrics(tmp_path):
    for name in ("fp32", "bf16"):
        trainer = fp16_trainer(tmp_path / name, precision_name=name)
        [record] = trainer.train()
        assert trainer.scaler is None and "scaler_skipped_steps" not in record.as_json()
        assert "scaler" not in trainer.state_dict()


def test_the_scaler_state_is_part_of_the_trainer_state(tmp_path):
    trainer = fp16_trainer(tmp_path / "a")
    trainer.train()
    state = trainer.state_dict()
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() < 65536.0
    fresh = fp16_trainer(tmp_path / "b")
    fresh.load_state_dict(state)
    assert fresh.scaler.state_dict() == trainer.scaler.state_dict()
    assert fresh.scaler_skips == trainer.scaler_skips > 0


def test_mlm_pretraining_in_fp16_skips_an_overflowed_update_and_reports_it(tmp_path):
    from minbert import BertConfig
    from minbert.corpus import tokenise_and_pack
    from minbert.masking import MaskingVocab
    from minbert.mlm import BertForMaskedLM
    from minbert.mlm_training import MLMSettings, MLMTrainer
    from tests.conftest import DATA

    tokenizer = load_tokenizer()
    rows = tokenise_and_pack(read_column(DATA / "ids-sst-train.csv", "sentence", limit=40), tokenizer, 32)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=64)))
    trainer = MLMTrainer(model, MaskingVocab.from_tokenizer(tokenizer), rows, rows,
                         MLMSettings(max_steps=6, batch_size=8, eval_every=3, seed=0, precision="fp16"))
    loss, calls, changed = model.loss, [], []

    def overflowing_loss(*args):
        value = loss(*args)
        calls.append(None)
        return value + InfiniteGradient.apply(value) if len(calls) == 3 else value

    model.loss = overflowing_loss
    step = trainer.train_step

    def watched_step(index):
        before = [p.detach().clone() for p in model.parameters()]
        result = step(index)
        changed.append(any(not torch.equal(a, p) for a, p in zip(before, model.parameters())))
        return result

    trainer.train_step = watched_step
    history = trainer.train(tmp_path / "mlm_metrics.jsonl", report=lambda line: None)
    assert not changed[2] and trainer.scaler_skips == changed.count(False) >= 1
    assert trainer.step == 6 and all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1]["scaler_skipped_steps"] == trainer.scaler_skips
    assert json.loads((tmp_path / "mlm_metrics.jsonl").read_text().splitlines()[-1])["scaler_skipped_steps"] == \
        trainer.scaler_skips
