"""The Auto-DeepLab architecture search (the part the official code never released).

* `trellis`    the network-level space as data: nodes, transitions, beta layout, paths, Viterbi.
* `supernet`   the continuous relaxation (alpha over 8 ops per edge, beta over transitions), built as
               few large ops so the paper-size graph compiles in about a minute.
* `reference`  the same supernet edge by edge (Keras layers from the op table): readable, tested
               equal to `supernet`; where a new candidate op is tried first.
* `decode`     alpha/beta -> `architecture.Architecture` (official genotype form).
* `searcher`   the first-order bi-level loop under tf.distribute, checkpoints, outputs.
* `visualize`  PNGs of the cell, the path, alpha and beta.
"""
