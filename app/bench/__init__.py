"""Model zoos and the benchmark: ``lineage zoo build`` and ``lineage bench``.

``zoo``: trains a family's zoo on this CPU and writes its manifest (every model's parent,
generation, data, learning rate, steps, seed) and its splits (queries with candidate sets and
ground truth). ``data``: the training data, all bundled or generated (nothing downloaded).
``evaluate``: scores every split with every method and times them. ``calibrate``: sets ``auto``
and the Taylor scale α from zoos' scores; ``protocol``: fits them without each seed and without
each family, so no zoo is judged with constants fitted on it. ``universal_detector``: trains the
detector of every architecture. ``report``: the tables, the plot and ``docs/benchmarks.md``.
"""
