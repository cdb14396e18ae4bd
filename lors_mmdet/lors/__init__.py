"""LORS, the method: pure PyTorch, no OpenMMLab import.

- :mod:`.static`: a stack of linear maps sharing one weight, each layer
  adding a private low-rank residual ``W_i = W_shared + B_i A_i``.
- :mod:`.adaptive`: query-generated matrices, shared generator plus per-layer
  low-rank private part ``M_i(q) = M_shared(q) + sum_t L_it Z_it(q) R_it``.
- :mod:`.merge`: LORS stack <-> N dense weights (deployment, conversion).
- :mod:`.calibrated`: dense -> LORS fitted to the layers' inputs (whitened
  residuals, shared weight refit), from streamed input second moments.
- :mod:`.rank_selection`: ranks of a from-dense stack by the residual energy
  they keep (and the energy a fixed rank keeps).
- :mod:`.accounting`: parameter counts, re-initialisation of private parts.
- :mod:`.surgery`: any stack of identical modules -> LORS in place
  (:func:`apply_lors`), and back (:func:`merge_lors`); settings in
  :mod:`.stack_config`, ``nn.MultiheadAttention`` as :mod:`.attention`,
  modules that generate matrices from the query declare them as
  :mod:`.generated` says (the adaptive target kind).

See ``docs/lors_library.md``.
"""
from .accounting import ParameterCount, count_parameters, reset_lors_parameters
from .adaptive import (GeneratedMatrices, LorsAdaptive, LorsGeneratedLinear,
                       SharedGenerator)
from .attention import LorsAttention
from .calibrated import (InputSecondMoment, calibrated_factors,
                         lors_from_dense_calibrated)
from .generated import GeneratedWeights, declare_generated, generated_weights
from .merge import lors_from_dense, merge_linears
from .rank_selection import (RankChoice, choose_stack_ranks, dense_weight,
                             rank_for_energy, rank_report,
                             residual_energy_curves)
from .stack_config import AdaptiveConfig, LorsStackConfig
from .static import (FACTOR_INITS, LorsLinear, LorsLinearStack, SharedLinear,
                     build_lors_linears)
from .surgery import (LorsStack, apply_lors, find_lors_stacks, init_as_stock,
                      is_lors_key, merge_lors)

__all__ = [
    'SharedLinear', 'LorsLinear', 'LorsLinearStack', 'build_lors_linears',
    'SharedGenerator', 'LorsAdaptive', 'GeneratedMatrices',
    'LorsGeneratedLinear', 'GeneratedWeights', 'declare_generated',
    'generated_weights', 'AdaptiveConfig', 'merge_linears',
    'lors_from_dense', 'count_parameters', 'ParameterCount',
    'reset_lors_parameters', 'FACTOR_INITS', 'LorsAttention', 'LorsStackConfig',
    'LorsStack', 'apply_lors', 'find_lors_stacks', 'merge_lors', 'init_as_stock',
    'is_lors_key',
    'RankChoice', 'choose_stack_ranks', 'dense_weight', 'rank_for_energy',
    'rank_report', 'residual_energy_curves', 'InputSecondMoment',
    'calibrated_factors', 'lors_from_dense_calibrated'
]
