"""bf16 autocast: chosen only where the hardware has it, fp32 master weights, outputs within bf16 tolerance."""

from __future__ import annotations

import pytest
import torch

from minbert import BertModel, load_tokenizer, precision
from minbert.precision import autocast, resolve_precision
from multitask.model import MultitaskBert
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average
from multitask.train import Trainer, TrainSettings
from tests.conftest import read_column
from tests.test_smart_training import TINY, tiny_tasks

CPU = torch.device("cpu")


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


@pytest.mark.parametrize("supported,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    assert resolve_precision("auto", torch.device("cuda")) == expected


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
    with pytest.raises(ValueError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


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
    terms = trainer.loss_terms("sst", tasks["sst"].batch([0, 1, 2]))
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
    from minbert.linear import Linear
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
        output = model("sst", batch)
    assert seen == [torch.bfloat16] and output.dtype == torch.float32
