"""wfst_asr.fsa: the differentiable FSA engine (pure PyTorch, k2's vocabulary).

Main entry points:

* :class:`Fsa` (one FSA or an FsaVec), :func:`create_fsa_vec`, :func:`linear_fsa`
* :class:`SymbolTable`, text and OpenFst/kaldifst I/O, :func:`to_dot` / :func:`draw`
* :class:`DenseFsaVec`, :func:`ctc_topo`, :func:`ctc_graph`
* :func:`intersect_dense`, :func:`intersect_dense_pruned`
* :func:`get_tot_scores`, :func:`get_forward_scores`, :func:`get_backward_scores`,
  :func:`get_arc_post`, :func:`shortest_path`
* static graph algorithms through OpenFst (kaldifst): :mod:`wfst_asr.fsa.ops`
"""

from .fsa import Fsa, create_fsa_vec, linear_fsa
from .dense import DenseFsaVec
from .ctc import ctc_graph, ctc_topo

__all__ = ["Fsa", "create_fsa_vec", "linear_fsa", "DenseFsaVec", "ctc_topo", "ctc_graph"]

from .forward_backward import (  # noqa: E402
    get_arc_post,
    get_backward_scores,
    get_forward_scores,
    get_tot_scores,
)

__all__ += ["get_tot_scores", "get_forward_scores", "get_backward_scores", "get_arc_post"]

from . import ops
from .draw import draw, to_dot
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
from .symbol_table import SymbolTable

__all__ += [
    "SymbolTable",
    "draw",
    "from_file",
    "from_kaldifst",
    "from_openfst",
    "from_openfst_file",
    "from_str",
    "load",
    "ops",
    "read_fst",
    "save",
    "to_dot",
    "to_file",
    "to_kaldifst",
    "to_openfst_str",
    "to_str",
    "write_fst",
]

from .intersect_dense import DenseLattice, intersect_dense  # noqa: E402
from .shortest_path import shortest_path  # noqa: E402

__all__ += ["DenseLattice", "intersect_dense", "shortest_path"]

from .pruned import intersect_dense_pruned  # noqa: E402

__all__ += ["intersect_dense_pruned"]
