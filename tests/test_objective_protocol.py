"""What each objective declares (objectives/base.py) is what it does."""

import pytest
import torch

from dgmm_lab.nets.feature_extractor import MLP, Identity
from dgmm_lab.objectives import DAGMMObjective, MDNObjective, NLLObjective, Objective, VaDEObjective
from dgmm_lab.objectives.base import CAPABILITIES


def build(cls):
    torch.manual_seed(0)
    if cls is NLLObjective:
        return NLLObjective(Identity((4,)), 3, "diag")
    if cls is MDNObjective:
        return MDNObjective(MLP((4,), 5, (8,)), 3, "diag", target_dim=2)
    return cls(MLP((4,), 2, (8,)), 3, "diag")


OBJECTIVES = (NLLObjective, DAGMMObjective, VaDEObjective, MDNObjective)


@pytest.mark.parametrize("cls", OBJECTIVES)
def test_declared_capabilities_are_what_it_does(cls):
    objective = build(cls).eval()
    x = torch.randn(32, 4)
    assert isinstance(objective, Objective) and objective.offers <= set(CAPABILITIES)
    if objective.needs_training_set_pass:
        objective.fit_training_set([x])
    assert objective.has_mixture() == (not objective.conditional)
    with torch.no_grad():
        z = objective.embed(x)
        assert z.shape[0] == 32
        decoded = objective.decode(z)
        assert (decoded is not None and decoded.shape == x.shape) == ("decode" in objective.offers)
        assert objective.cluster(x).shape == (32,)
        target = torch.randn(32, 2) if objective.conditional else None
        assert objective.log_prob(x, target).shape == (32,)
    for capability in CAPABILITIES:
        if capability in objective.offers:
            objective.check_offers(capability)
        else:
            with pytest.raises(ValueError, match=f"objective={objective.name} does not offer {capability}"):
                objective.check_offers(capability)


@pytest.mark.parametrize("cls", OBJECTIVES)
def test_only_objectives_with_a_stage_pretrain_or_pass_over_the_training_set(cls):
    objective = build(cls)
    assert objective.pretraining is None  # no pre-training epochs asked for
    if not objective.needs_training_set_pass:
        with pytest.raises(NotImplementedError, match="needs no training-set pass"):
            objective.fit_training_set([])


def test_vade_declares_a_pretraining_stage_when_its_settings_ask_for_one():
    staged = VaDEObjective(MLP((4,), 2, (8,)), 3, "diag", pretrain_epochs=2, pretrain_lr=0.01)
    assert staged.pretraining.epochs == 2 and staged.pretraining.lr == 0.01
    assert torch.isfinite(staged.pretrain_loss(torch.rand(8, 4)))
