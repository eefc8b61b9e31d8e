"""Landmarks of new X-rays (``mahtnet predict``): the per-image result document (``result``),
one command-line run over files (``run``) and the overlay pictures (``overlay``)."""
