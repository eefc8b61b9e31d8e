"""The commands behind ``mahtnet evaluate|export|benchmark`` and the DVC stages of the same names
(``stages/evaluate.py``, ``stages/export.py`` and ``scripts/benchmark_predict.py`` call them):
each a ``main(argv)``."""
