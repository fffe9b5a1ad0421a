"""The tiny construct nets and random DAG CNNs run in eval and train mode, trace, and give usable outputs.

No net needs custom leaf modules: nn.MultiheadAttention (tiny_vit) is a call_module leaf by default.
"""
from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from nets import NETS, RandomDagNet, dag_specs, make_dag_net, random_dag_cnn
from torch import fx


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a net output (a tensor or a tuple that may hold None)."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t for t in items if isinstance(t, torch.Tensor)]


def _assert_usable(out: Any, batch: int) -> None:
    """Finite, non-constant outputs with the batch dimension first."""
    tensors = _tensors(out)
    assert tensors
    for t in tensors:
        assert t.shape[0] == batch
        assert torch.isfinite(t).all()
        assert t.std() > 1e-2, "degenerate (near-constant) output"
        assert not torch.allclose(t[0], t[1]), "output does not depend on the input"


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_forward(name: str, train: bool) -> None:
    model, x = NETS[name]()
    assert not model.training, "factories return eval-mode nets"
    with torch.no_grad():
        _assert_usable(model.train(train)(x), x.shape[0])


@pytest.mark.parametrize("name", sorted(NETS))
def test_symbolic_trace_matches_eager(name: str) -> None:
    model, x = NETS[name]()
    gm = fx.symbolic_trace(model)
    with torch.no_grad():
        for got, want in zip(_tensors(gm(x)), _tensors(model(x)), strict=True):
            torch.testing.assert_close(got, want)


def test_factories_are_deterministic() -> None:
    (m1, x1), (m2, x2) = NETS["residual"](), NETS["residual"]()
    assert torch.equal(x1, x2)
    with torch.no_grad():
        assert torch.equal(m1(x1), m2(x2))


def test_train_only_branch_vanishes_from_eval_trace() -> None:
    model, x = NETS["train_only_branch"]()
    eval_targets = {n.target for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_module"}
    train_gm = fx.symbolic_trace(model.train())
    train_targets = {n.target for n in train_gm.graph.nodes if n.op == "call_module"}
    assert not any(t.startswith("aux") for t in eval_targets)
    assert {"aux.0", "aux.2"} <= train_targets
    with torch.no_grad():
        assert len(_tensors(train_gm(x))) == 2


def test_tiny_vit_bakes_hidden_size_and_keeps_attention_as_leaf() -> None:
    model, _ = NETS["tiny_vit"]()
    nodes = list(fx.symbolic_trace(model).graph.nodes)
    reshape = next(n for n in nodes if n.target == "reshape")
    assert 16 in reshape.args, "the hidden size is a literal in the traced reshape"
    mha = [n for n in nodes if n.op == "call_module" and isinstance(model.get_submodule(n.target),
                                                                    torch.nn.MultiheadAttention)]
    assert len(mha) == 2


def test_channel_shuffle_traces_to_view_transpose_view() -> None:
    model, _ = NETS["channel_shuffle"]()
    targets = [n.target for n in fx.symbolic_trace(model).graph.nodes]
    assert targets.count(torch.transpose) == 3 and targets.count("view") == 6 and "chunk" in targets


def test_dropout_is_stochastic_only_in_train_mode() -> None:
    model, x = NETS["unary_ops"]()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_shared_conv_is_called_twice() -> None:
    model, _ = NETS["shared_conv"]()
    calls = [n for n in fx.symbolic_trace(model).graph.nodes if n.target == "shared"]
    assert len(calls) == 2


def test_dag_net_rejects_inconsistent_spec() -> None:
    spec = [{"kind": "conv", "in": 3, "out": 8, "kernel": 3, "stride": 1},
            {"kind": "dwsep", "in": 6, "out": 8, "stride": 1}]
    with pytest.raises(ValueError, match="takes 6 channels"):
        RandomDagNet(spec)


def test_dag_net_repr_is_the_spec() -> None:
    spec = [{"kind": "conv", "in": 3, "out": 8, "kernel": 3, "stride": 1},
            {"kind": "grouped", "in": 8, "out": 12, "stride": 2, "groups": 4}]
    net = make_dag_net(spec)
    assert repr(net) == f"RandomDagNet(spec={spec!r})"
    assert net.blocks[1][0].groups == 4


@settings(max_examples=25, deadline=None)
@given(net=random_dag_cnn())
def test_random_dag_forward_and_trace(net: RandomDagNet) -> None:
    x = net.example_input()
    gm = fx.symbolic_trace(net)
    with torch.no_grad():
        out = net(x)
        _assert_usable(out, 2)
        torch.testing.assert_close(gm(x), out)
        _assert_usable(net.train()(x), 2)


@settings(max_examples=25, deadline=None)
@given(spec=dag_specs())
def test_dag_specs_are_plain_and_chained(spec: list[dict]) -> None:
    assert 3 <= len(spec) <= 7 and spec[0]["in"] == 3
    for prev, block in itertools.pairwise(spec):
        assert block["in"] == prev["out"]
        assert all(isinstance(v, (str, int, list)) for v in block.values())
        if block["kind"] == "grouped":
            assert block["in"] % block["groups"] == 0 and block["out"] % block["groups"] == 0
