"""Depth pass: repeat blocks of a traced model with function-preserving (identity) initialisation.

A depth plan maps a *stage key* to a new block count (``ScalingPlan.depths``). Two key forms exist:

- ``"S"`` names an ``nn.Sequential`` of blocks in the original model (``"layer1"`` in torchvision
  ResNets, ``"features.3"`` in ConvNeXt, ``"stages.0"`` in ``digits_resnet``). The value is the new number
  of blocks; the last block is repeated and the copies are appended (``layer1.2``, ``layer1.3``, ...).
- ``"S.K"`` names child ``K`` of an ``nn.Sequential`` ``S``. The value is how many times that unit appears
  (1 = unchanged). If the child is a block (a container such as a BasicBlock or InvertedResidual), the block
  is repeated; if it is a leaf ``Conv`` in a flat Sequential (torchvision VGG ``features``), its
  conv -> [BatchNorm] -> [ReLU] run of siblings is repeated. Copies go right after the unit and the later
  children of ``S`` are renumbered, so the state_dict reads like the deeper network (vgg13_bn plus
  ``features.17``, ``features.24``, ``features.31`` at 2 gives exactly vgg16_bn's key names).

A ``Sequential`` that is itself a stage (its last child is a block) is read as the ``"S"`` form.

Only blocks whose input and output shapes are equal can be repeated (stride 1, same channels), and only
single-input, single-output blocks. Copies are chained after the block and initialised as identities:

- residual block, ``out = act(x + branch(x))``: the last norm on the branch (BatchNorm/LayerNorm/GroupNorm
  gamma and beta; else a layer-scale parameter or the last conv/linear) is zeroed, so the branch is 0 and the
  copy computes ``act(x)``, which is ``x`` because ``x`` is itself the output of the same activation;
- plain chain conv -> BN -> ReLU (VGG): Dirac conv (bias 0), BatchNorm identity in eval (running mean 0,
  var 1, gamma sqrt(1 + eps), beta 0), ReLU of a non-negative input.

A block that fits neither pattern raises PlanError unless ``init="reinit"`` (fresh initialisation of the
copies, not function-preserving). Preservation holds in eval mode (BatchNorm in train mode uses batch
statistics). The pass works on the eval graph only: models with a train-mode graph (aux heads) are refused.

Every op question (residual add, gate multiply, f(0) == 0, identity on an interval, value bounds, pools, norms,
convs) is asked of the op table, fxscale.ops (see facts.py). In-place ops (``out.add_(x)``) are read as the
value they write. Modules: index (module index, stage keys), resolve (which block a key repeats), identity
(identity init), ranges (value ranges), plan (plan_depths), apply (the rewrite and depth_pass).
"""
from fxscale.passes.depth.apply import depth_pass
from fxscale.passes.depth.identity import identity_recipe
from fxscale.passes.depth.index import _Index, _index, stage_keys  # noqa: F401  (_index: old private name)
from fxscale.passes.depth.plan import plan_depths, validate_depths
from fxscale.passes.depth.ranges import value_range
from fxscale.passes.depth.resolve import Insertion, resolve

__all__ = ["depth_pass", "plan_depths", "validate_depths", "stage_keys", "resolve", "identity_recipe",
           "value_range", "Insertion"]
