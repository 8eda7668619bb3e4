"""FedProx's client side: the proximal term the helpers give a project (issue 15).

The term's gradient is mu * (w - w_global), by autograd and through the one-line hook, in a
torch loop (and in keras' model.fit on the torch backend: tests/test_helpers.py); mu reaches the projects' train
(tests/test_task_context.py, tests/test_digits_project.py, tests/test_mnist_projects.py)."""
from __future__ import annotations

import pytest
import torch

from fedtier.helpers.pytorch_helper import add_proximal_term, global_snapshot, proximal_term


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def moved(model: torch.nn.Module) -> None:
    """Training has moved the weights away from the round's model."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


def data_gradients(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_the_terms_gradient_is_mu_times_the_distance_to_the_global_model() -> None:
    model, mu = tiny(), 0.37
    start = global_snapshot(model)
    assert proximal_term(model, start, mu).item() == 0.0
    moved(model)
    term = proximal_term(model, start, mu)
    term.backward()
    for p, g in zip(model.parameters(), start):
        torch.testing.assert_close(p.grad, mu * (p.detach() - g))
    expected = 0.5 * mu * sum(((p.detach() - g) ** 2).sum() for p, g in zip(model.parameters(), start))
    torch.testing.assert_close(term.detach(), expected)
    with pytest.raises(ValueError, match="mu must be"):
        proximal_term(model, start, -1.0)
    with pytest.raises(ValueError, match="trainable tensors"):
        proximal_term(model, start[:1], mu)


def test_the_hook_adds_the_terms_gradient_to_every_backward_and_can_be_removed() -> None:
    x = torch.randn(5, 3)
    model, mu = tiny(), 2.5
    hook = add_proximal_term(model, mu)  # the round's model is the weights now
    moved(model)
    plain = tiny()
    plain.load_state_dict(model.state_dict())
    with_term, without = data_gradients(model, x), data_gradients(plain, x)
    for got, base, p, g in zip(with_term, without, model.parameters(), hook.global_params):
        torch.testing.assert_close(got, base + mu * (p.detach() - g))
    hook.remove()
    for got, base in zip(data_gradients(model, x), without):
        torch.testing.assert_close(got, base)
    # mu 0 (FedAvg, or no mu sent) registers nothing
    assert add_proximal_term(model, 0.0)._handles == []
    with pytest.raises(ValueError, match="mu must be"):
        add_proximal_term(model, float("nan"))
