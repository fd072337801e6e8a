"""wfst_asr.fsa: the differentiable FSA engine (pure PyTorch, k2's vocabulary).

Main entry points:

* :class:`Fsa` (one FSA or an FsaVec), :func:`create_fsa_vec`, :func:`linear_fsa`
* :class:`SymbolTable`, text and OpenFst/kaldifst I/O, :func:`to_dot` / :func:`draw`
* :class:`DenseFsaVec` (topologies and training graphs are in :mod:`wfst_asr.graphs`)
* :func:`intersect_dense`, :func:`intersect_dense_pruned`, :func:`intersect_sequences`,
  :func:`best_path_arcs` (beam search with back-pointers: 1-best without a lattice)
* :func:`get_tot_scores`, :func:`get_forward_scores`, :func:`get_backward_scores`,
  :func:`get_arc_post`, :func:`shortest_path`
* static graph algorithms through OpenFst (kaldifst): :mod:`wfst_asr.fsa.ops`
* dense segment lattices (semi-Markov sums, maxima, posteriors, best paths):
  :mod:`wfst_asr.fsa.segment`
"""

from . import ops
from .dense import DenseFsaVec
from .draw import draw, to_dot
from .forward_backward import get_arc_post, get_backward_scores, get_forward_scores, get_tot_scores
from .fsa import Fsa, create_fsa_vec, linear_fsa
from .intersect import DenseLattice, intersect_dense
from .io import (
    from_file,
    from_kaldifst,
    from_openfst,
    from_openfst_file,
    from_str,
    load,
    read_fst,
    save,
    to_file,
    to_kaldifst,
    to_openfst_str,
    to_str,
    write_fst,
)
from .pruned import intersect_dense_pruned
from .sequences import intersect_sequences
from .shortest_path import shortest_path
from .symbol_table import SymbolTable
from .viterbi import best_path_arcs

__all__ = [
    "DenseFsaVec",
    "DenseLattice",
    "Fsa",
    "SymbolTable",
    "best_path_arcs",
    "create_fsa_vec",
    "draw",
    "from_file",
    "from_kaldifst",
    "from_openfst",
    "from_openfst_file",
    "from_str",
    "get_arc_post",
    "get_backward_scores",
    "get_forward_scores",
    "get_tot_scores",
    "intersect_dense",
    "intersect_dense_pruned",
    "intersect_sequences",
    "linear_fsa",
    "load",
    "ops",
    "read_fst",
    "save",
    "shortest_path",
    "to_dot",
    "to_file",
    "to_kaldifst",
    "to_openfst_str",
    "to_str",
    "write_fst",
]
