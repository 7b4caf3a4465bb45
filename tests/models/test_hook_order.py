"""rehyat's diffusers hooks come off last-in, first-out: removing one from under a later hook is refused.

diffusers' ``HookRegistry.remove_hook`` on a hook that is not the last rewires the next hook's plain
``forward`` only, so a later hook with a ``new_forward`` (the recurrent mode's) would be skipped silently.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import ModelHook
from torch import nn

from rehyat.models.hooks import register_hooks, remove_hooks


class _Scale(ModelHook):
    """Doubles the output (post_forward)."""

    def post_forward(self, module, output):
        return output * 2


class _Replace(ModelHook):
    """Replaces the forward (new_forward): adds 1 to the module's own output."""

    def new_forward(self, module, *args, **kwargs):
        return self.fn_ref.original_forward(*args, **kwargs) + 1


def test_a_hook_under_a_later_one_is_not_removed():
    torch.manual_seed(0)
    module, x = nn.Linear(3, 3), torch.randn(2, 3)
    plain = module(x)
    register_hooks(module, [(module, _Scale(), "scale")])
    register_hooks(module, [(module, _Replace(), "replace")])
    hooked = module(x)
    assert torch.allclose(hooked, plain * 2 + 1)
    with pytest.raises(
        ValueError, match=r"cannot remove hook 'scale' from Linear: \['replace'\] were registered"
    ):
        remove_hooks(module, ("scale",), (module,))
    assert torch.equal(module(x), hooked)  # refused before anything changed
    remove_hooks(module, ("replace",), (module,))
    assert torch.allclose(module(x), plain * 2)
    remove_hooks(module, ("scale",), (module,))
    assert "forward" not in vars(module) and torch.equal(module(x), plain)


def test_hooks_removed_together_may_come_off_in_any_order():
    module, x = nn.Linear(3, 3), torch.randn(2, 3)
    plain = module(x)
    register_hooks(module, [(module, _Scale(), "scale"), (module, _Replace(), "replace")])
    remove_hooks(module, ("scale", "replace"), (module,))
    assert "forward" not in vars(module) and torch.equal(module(x), plain)
