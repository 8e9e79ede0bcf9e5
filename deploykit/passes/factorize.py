"""Low-rank factorization (`factorize`): FFN kernels replaced by their truncated SVD.

Each FFN Dense (hidden -> intermediate and back) becomes two Dense layers of rank
r, which costs r * (inputs + outputs) weights instead of inputs * outputs. The rank
comes from a parameter budget (the share of each kernel's weights kept) or from the
singular-value energy to retain; the factorized model is then fine-tuned against
the original. Whether it pays depends on the runtime: two thinner matmuls save
FLOPs and bytes but add an op and a quantization step each.
"""

from __future__ import annotations

import numpy as np

from deploykit.graph.bert_surgery import FFN_DENSE, factorize_dense, keep_all, parameter_count, reshaped_backbone
from deploykit.errors import DeployKitError
from deploykit.passes.base import Pass, PassContext, PassResult
from deploykit.passes.parameters import parameter
from deploykit.passes.training import FineTuneParameters, fine_tune_from_teacher


class FactorizeParameters(FineTuneParameters):
    budget: float = parameter(0.5, "Share of each FFN kernel's weights kept (sets the rank).", gt=0, lt=1,
                              search=(0.1, 0.9))
    energy: float = parameter(0.0, "If above 0: the rank keeping this share of the squared singular values, "
                              "instead of the budget.", ge=0, lt=1)
    steps: int = parameter(800, "Fine-tune steps against the original (0: none).", ge=0, search=(200, 2000))


class Factorize(Pass):
    name = "factorize"
    description = "FFN kernels as truncated-SVD pairs (rank from a parameter budget or retained energy), fine-tuned"
    Parameters = FactorizeParameters
    rebuilds_model = True
    learns_from_original = True

    def architecture_after(self, architecture):
        if self.parameters.energy > 0:  # the rank follows the singular values: unknown before the SVD
            return None
        kernel = (architecture.hidden, architecture.intermediate)
        return architecture.changed(ffn_rank=max(1, int(self.parameters.budget * kernel[0] * kernel[1] / sum(kernel))))

    def apply(self, context: PassContext) -> PassResult:
        p = self.parameters
        backbone = context.bundle.backbone
        copy = reshaped_backbone(backbone, keep_all(backbone))  # factorize a copy: the input model stays as it was
        ranks = []
        for block in copy.transformer_layers:
            for attribute in FFN_DENSE:
                dense = getattr(block, attribute)
                if not hasattr(dense, "kernel"):
                    raise DeployKitError("factorize: this model's FFN is already factorized; give the pass once.")
                rank = self.rank(dense.kernel.numpy())
                factorize_dense(block, attribute, rank)
                ranks.append(rank)
        factorized = context.bundle.with_backbone(copy)
        effect = {
            "ffn_ranks": sorted(set(ranks)), "full_rank": int(min(backbone.hidden_dim, backbone.intermediate_dim)),
            "parameters_before": parameter_count(backbone), "parameters_after": parameter_count(copy),
        }
        effect.update(fine_tune_from_teacher(factorized, context, p, self.name))
        return PassResult(self.name, self.describe(), effect, bundle=factorized)

    def rank(self, kernel: np.ndarray) -> int:
        inputs, outputs = kernel.shape
        if self.parameters.energy > 0:
            singular = np.linalg.svd(kernel, compute_uv=False)
            share = np.cumsum(singular**2) / np.sum(singular**2)
            return int(np.searchsorted(share, self.parameters.energy) + 1)
        return max(1, int(self.parameters.budget * inputs * outputs / (inputs + outputs)))
